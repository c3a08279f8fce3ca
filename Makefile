# The two commands a new user needs: `make demo` and `make test`.
# Both create .venv and install vitpipe into it on first use (pip; torch resolves from a
# range, see pyproject.toml).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test install bench clean redis

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# redis-server for the GCS fault-tolerance test: installed from the distribution's packages
# when missing (as root, where apt-get exists); otherwise a clear message and a failure.
redis:
	@command -v redis-server >/dev/null && exit 0; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "make: installing redis-server (apt-get)"; \
	    apt-get install -y --no-install-recommends redis-server >/dev/null 2>&1 || \
	    { apt-get update -qq && apt-get install -y --no-install-recommends redis-server; }; \
	  else \
	    echo "make test needs redis-server: install it (apt-get install redis-server," \
	         "dnf install redis, brew install redis) and run make test again" >&2; exit 1; \
	  fi; \
	  command -v redis-server >/dev/null

# Whole test suite against real local services (Ray, mlflow server, S3, Redis on loopback).
# pytest's exit code 5 (nothing collected) is turned into a failure.
test: $(STAMP) redis
	$(PY) -m pytest tests -q -p no:cacheprovider --durations=20; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; exit 1; fi; \
	  exit $$rc

demo: $(STAMP)
	$(PY) -m pipelines.demo

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

clean:
	rm -rf .demo build *.egg-info .pytest_cache
