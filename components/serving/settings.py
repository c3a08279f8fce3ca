"""Typed settings of the serving deployments.

Each deployment's ``user_config`` (the Serve config YAML, ``pipelines/configs/serve.yaml``)
is validated as one of these models in ``reconfigure``; changing it with ``serve deploy``
retunes running replicas without a restart (batch size, wait time, poll interval, limits).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from components.core.config import StrictModel
from components.core.names import ModelTask

# Environment of every Ray node that serves (set before `ray start`; the k8s ConfigMap, the
# demo's head and the test cluster carry it): Serve's gRPC data plane between the proxy and
# the replicas (and between deployments) instead of Ray actor calls. It is what Ray's
# documented RAY_SERVE_THROUGHPUT_OPTIMIZED mode turns on, without that mode's other
# switches (direct ingress, user code on the main loop). bench_serve.py measures both.
SERVE_NODE_ENV = {"RAY_SERVE_USE_GRPC_BY_DEFAULT": "1"}

DEFAULT_CLASSIFIER_URI = "models:/vitpipe-classifier@champion"
DEFAULT_DETECTOR_URI = "models:/vitpipe-detector@champion"
TOKEN_ENV = "VITPIPE_SERVE_TOKEN"
CACHE_ENV = "VITPIPE_MODEL_CACHE"


class ModelServerSettings(StrictModel):
    """``user_config`` of a model deployment (one per task)."""

    model_uri: str = Field(
        DEFAULT_CLASSIFIER_URI,
        description="registry URI: models:/NAME@ALIAS (followed) or models:/NAME/VERSION (pinned)",
    )
    max_batch_size: int = Field(16, ge=1, le=1024, description="dynamic batch: most requests")
    batch_wait_timeout_s: float = Field(
        0.002, ge=0.0, le=5.0,
        description="dynamic batch: longest wait for more requests (under load batches also "
                    "fill while the previous one runs, so a short wait costs little)",
    )
    poll_interval_s: float = Field(
        30.0, ge=0.0, description="how often the alias is re-resolved; 0 turns polling off"
    )
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    runtime: Literal["torch", "onnx"] = Field(
        "torch", description="torch: the checkpoint in PyTorch; onnx: the version's ONNX export "
                             "(vitpipe export) in onnxruntime, CPU provider, fp32",
    )
    top_k: int = Field(5, ge=1, le=1000, description="classification: labels returned")
    score_threshold: float = Field(0.3, ge=0.0, le=1.0, description="detection: lowest score")
    max_detections: int = Field(100, ge=1, le=1000, description="detection: most boxes")
    cache_dir: str | None = Field(
        None, description=f"local model cache (default ${CACHE_ENV} or ~/.cache/vitpipe/models)"
    )
    stall_timeout_s: float = Field(
        30.0, gt=0.0,
        description="a batch running longer fails the replica's health check (three failed "
                    "checks in a row and Serve replaces it); the ingress' request_timeout_s "
                    "has answered its requests with 503 by then",
    )


class IngressSettings(StrictModel):
    """``user_config`` of the HTTP ingress deployment: request limits and timeouts."""

    max_body_bytes: int = Field(16 * 2**20, ge=1, description="larger bodies get 413")
    max_pixels: int = Field(
        40_000_000, ge=1, description="images with more pixels get 413 (checked before decoding)"
    )
    request_timeout_s: float = Field(
        30.0, gt=0.0,
        description="limit of one request's model calls, a retry included → 503 past it")
    retry_after_s: int = Field(
        1, ge=0, le=3600, description="Retry-After header (seconds) of a 503 answer")
    health_timeout_s: float = Field(10.0, gt=0.0, description="/healthz inference limit")
    decode_threads: int = Field(4, ge=1, le=64, description="thread pool for image decoding")
    require_token: bool = Field(
        False, description=f"refuse to start when ${TOKEN_ENV} is unset (auth must be on)"
    )


class ColocatedSettings(IngressSettings):
    """``user_config`` of an ingress that also runs the models itself (``colocate=True``).

    One deployment, one hop less per request: no handle call to a model deployment, no
    second serialisation. Each ``models`` entry configures that task's in-process
    :class:`~components.serving.model_server.ModelServer` (``model_uri`` required).
    """

    models: dict[ModelTask, ModelServerSettings] = Field(
        ..., min_length=1, description="task → that model's settings (batching, URI, ...)")
