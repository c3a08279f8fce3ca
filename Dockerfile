# syntax=docker/dockerfile:1
# The ONE vitpipe image: Ray head, CPU and GPU workers, the RayJob submitter, Serve replicas
# and the MLflow server all run it, so their Ray, Python, torch and vitpipe versions cannot
# drift apart (version skew between head, workers and submitter is the classic failure).
#
# CPU:  docker build -t REGISTRY/vitpipe:0.1.0-ray2.60.0-py311-cpu .
# GPU:  docker build --build-arg RAY_IMAGE=rayproject/ray:2.60.0-py311-gpu \
#         -t REGISTRY/vitpipe:0.1.0-ray2.60.0-py311-gpu .
#
# RAY_VERSION must equal the Ray version of the base image tag and spec.rayVersion in
# k8s/ (tests/k8s checks all three); `vitpipe preflight` checks a running cluster against
# the machine you submit from.
ARG RAY_VERSION=2.60.0
ARG RAY_IMAGE=rayproject/ray:2.60.0-py311
FROM ${RAY_IMAGE}
ARG RAY_VERSION

# The base image's user `ray` (uid 1000, gid 100) owns the code; nothing runs as root.
WORKDIR /home/ray/vitpipe
COPY --chown=1000:100 pyproject.toml README.md ./
COPY --chown=1000:100 components ./components
COPY --chown=1000:100 pipelines ./pipelines

# Pin Ray to the base image's version so resolving vitpipe's dependencies can never move it;
# psycopg2 and boto3 are what the MLflow server needs for PostgreSQL and S3.
RUN echo "ray==${RAY_VERSION}" > /tmp/constraints.txt \
 && pip install --no-cache-dir -c /tmp/constraints.txt . "psycopg2-binary>=2.9" "boto3>=1.34" \
 && python -c "import ray, sys; assert ray.__version__ == '${RAY_VERSION}', ray.__version__" \
 && rm /tmp/constraints.txt

USER 1000:100
ENV RAY_USAGE_STATS_ENABLED=0 \
    HF_HUB_OFFLINE=1 \
    PYTHONUNBUFFERED=1
