"""The MLflow model registry: register checkpoints, resolve ``models:/`` URIs, fetch and load.

- :func:`register_checkpoint`: log a checkpoint as a pyfunc model (see
  :mod:`components.tracking.packaging`) and register it as a new version of
  ``vitpipe-classifier`` / ``vitpipe-detector`` (or a configured name), tagged with its run id,
  data fingerprint, git commit, task, architecture and validation metrics (``metric.<name>``).
- :func:`resolve_uri`: ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → a fixed
  :class:`ResolvedModel` (serving resolves an alias once, at load time).
- :func:`fetch_checkpoint`: the version's checkpoint directory on local disk, cached per
  version (``cache_dir/NAME/VERSION``) so that a restart does not download it again.
- :func:`load_registered`: URI → ``(model, meta, resolved)``, the torch model in eval mode.

Every user mistake (unknown model, version or alias, missing artifacts, wrong task) raises
:class:`RegistryError` with one clear sentence. Aliases only; stages are never used.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from components.core.checkpoint import (
    META_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    CheckpointMeta,
    read_meta,
)
from components.core.environ import restored_environ

log = logging.getLogger(__name__)

DEFAULT_NAMES = {"classification": "vitpipe-classifier", "detection": "vitpipe-detector"}
CHAMPION = "champion"
CHALLENGER = "challenger"
REGISTER_EXPERIMENT = "vitpipe-registry"
_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


class RegistryError(ValueError):
    """A registry request that cannot be served: unknown name/version/alias, bad artifacts."""


@dataclass(frozen=True)
class ResolvedModel:
    """One fixed registered-model version (``alias`` is how it was asked for, if at all)."""

    name: str
    version: str
    alias: str | None = None

    @property
    def uri(self) -> str:
        return f"models:/{self.name}/{self.version}"


def is_not_found(err: Exception) -> bool:
    """Does an ``MlflowException`` say "not found" (rather than: refused, unreachable)?"""
    code = getattr(err, "error_code", "")
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "not found" in str(err)
    )


def server_error(err: Exception, what: str) -> RegistryError:
    """Any other MLflow failure (401/403, 5xx) as one clear sentence."""
    code = getattr(err, "error_code", "") or type(err).__name__
    first = str(err).splitlines()[0][:200] if str(err) else ""
    hint = (" (set MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD)"
            if code in ("UNAUTHENTICATED", "PERMISSION_DENIED") else "")
    return RegistryError(f"MLflow refused {what}: {code}: {first}{hint}")


def default_name(task: str) -> str:
    try:
        return DEFAULT_NAMES[task]
    except KeyError:
        raise RegistryError(f"unknown task {task!r}: expected one of {sorted(DEFAULT_NAMES)}")


def client(tracking_uri: str | None = None):
    """A client of the registry at ``tracking_uri``, else ``MLFLOW_TRACKING_URI``, else the URI
    ``mlflow.set_tracking_uri`` set; none of them is a :class:`RegistryError` (MLflow itself
    would open ``./mlflow.db`` in the working directory and find nothing there)."""
    from mlflow import MlflowClient
    from mlflow.tracking._tracking_service import utils as tracking_utils

    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or tracking_utils._tracking_uri
    if not uri:
        raise RegistryError("no MLflow server to read the registry from: pass --tracking-uri "
                            "(or mlflow.tracking_uri) or set MLFLOW_TRACKING_URI")
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def git_commit() -> str:
    """The commit this code runs from (``VITPIPE_GIT_COMMIT`` wins, e.g. in images)."""
    if os.environ.get("VITPIPE_GIT_COMMIT"):
        return os.environ["VITPIPE_GIT_COMMIT"]
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent,
            capture_output=True, text=True, timeout=10,
        )
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ------------------------------------------------------------------------ register
@contextmanager
def _logging_run(run_id: str | None, tracking_uri: str | None, run_name: str) -> Iterator[str]:
    """The MLflow run to log the model into: the active one, ``run_id``, or a new one.

    A run reopened by id gets its previous status back afterwards (the training driver
    owns it and ends it itself).
    """
    import mlflow

    active = mlflow.active_run()
    if active is not None and run_id in (None, active.info.run_id):
        yield active.info.run_id
        return
    if active is not None:
        raise RegistryError(
            f"run {active.info.run_id} is active in this process; cannot log into run {run_id}"
        )
    if run_id is None:
        experiment = mlflow.set_experiment(REGISTER_EXPERIMENT)
        with mlflow.start_run(experiment_id=experiment.experiment_id, run_name=run_name) as run:
            yield run.info.run_id
        return
    mlf = client(tracking_uri)
    try:
        info = mlf.get_run(run_id).info
    except Exception as err:
        raise RegistryError(f"MLflow run {run_id} does not exist: {err}") from err
    previous = info.status
    # start_run(run_id) refuses a run outside the process's active experiment (a global that
    # an earlier set_experiment, e.g. a promotion in the same process, may have moved).
    mlflow.set_experiment(experiment_id=info.experiment_id)
    with mlflow.start_run(run_id=run_id):
        yield run_id
    if previous != "FINISHED":
        mlf.update_run(run_id, status=previous)


@contextmanager
def fluent_uris(tracking_uri: str | None) -> Iterator[None]:
    """MLflow's fluent API (``log_model``, ``start_run``) for ``tracking_uri``, for this block.

    ``mlflow.set_tracking_uri``/``set_registry_uri`` are process-global and also write
    ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` into ``os.environ``, which every Ray worker,
    job and Serve replica started later inherits (a registry URI leaked that way once sent
    the demo's replicas to another registry). Both are put back on exit. ``None``: as is.
    """
    if not tracking_uri:
        yield
        return
    import mlflow
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = (tracking_utils._tracking_uri, registry_utils._registry_uri)
    with restored_environ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
        try:
            yield
        finally:
            mlflow.set_tracking_uri(saved[0])
            mlflow.set_registry_uri(saved[1])


def _numeric(metrics: dict[str, Any]) -> dict[str, float]:
    return {
        k: float(v) for k, v in metrics.items()
        if isinstance(v, (int, float)) and not isinstance(v, bool)
    }


def register_checkpoint(
    checkpoint_dir: str | Path,
    *,
    task: str,
    run_id: str | None = None,
    registered_name: str | None = None,
    tracking_uri: str | None = None,
    metrics: dict[str, Any] | None = None,
    tags: dict[str, str] | None = None,
) -> str:
    """Log ``checkpoint_dir`` as a pyfunc model and register it; returns the new version.

    The checkpoint is rebuilt and run on the input example first, so a checkpoint that does
    not load never becomes a version. Only ``model.safetensors`` and ``vitpipe.json`` are
    uploaded (not the resume state). ``metrics`` default to the checkpoint's own.
    """
    import mlflow

    from components.tracking import packaging

    checkpoint_dir = Path(checkpoint_dir)
    meta = read_meta(checkpoint_dir)
    if not (checkpoint_dir / WEIGHTS_FILE).is_file():
        raise CheckpointError(f"{checkpoint_dir} is not a vitpipe checkpoint: no {WEIGHTS_FILE}")
    if meta.task != task:
        raise RegistryError(
            f"{checkpoint_dir} holds a {meta.task} model, not {task}: register it as {meta.task}"
        )
    if not meta.class_names:
        raise RegistryError(
            f"{checkpoint_dir} has no classes (an MAE-pretrained encoder?): nothing to serve; "
            "fine-tune it on labelled data and register that checkpoint"
        )
    name = registered_name or default_name(task)
    model, _ = packaging.model_from_checkpoint(checkpoint_dir)
    example = packaging.input_example(meta)
    signature = packaging.signature_for(meta, packaging.predict_arrays(model, meta, example))
    del model
    mlf = client(tracking_uri)
    _ensure_registered_model(mlf, name, meta.task)
    metric_values = _numeric(metrics if metrics is not None else meta.metrics)

    with tempfile.TemporaryDirectory(prefix="vitpipe-register-") as staging:
        staged = Path(staging) / packaging.CHECKPOINT_ARTIFACT
        staged.mkdir()
        for fname in (WEIGHTS_FILE, META_FILE):
            shutil.copy2(checkpoint_dir / fname, staged / fname)
        with fluent_uris(tracking_uri), _logging_run(run_id, tracking_uri,
                                                     f"register-{name}") as logged_run:
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(packaging.ENTRY_FILE),
                artifacts={packaging.CHECKPOINT_ARTIFACT: str(staged)},
                signature=signature,
                input_example=example,
                pip_requirements=_pip_requirements(),
                metadata={"vitpipe_task": meta.task, "vitpipe_model_name": meta.model_name},
            )
    version_tags = {
        "task": meta.task,
        "run_id": logged_run,
        "data_fingerprint": meta.data_fingerprint or "unknown",
        "git_commit": git_commit(),
        "model_name": meta.model_name,
        "image_size": str(meta.image_size),
        "num_classes": str(len(meta.class_names)),
        "checkpoint_step": str(meta.step),
        **{f"metric.{k}": f"{v:.6g}" for k, v in metric_values.items()},
        **{k: str(v) for k, v in (tags or {}).items()},
    }
    # One call creates the version with all its tags (no window where it is untagged).
    mv = mlf.create_model_version(
        name, source=info.model_uri, run_id=logged_run, tags=version_tags,
        model_id=info.model_id,
    )
    version = str(mv.version)
    log.info("registered %s version %s (run %s)", name, version, logged_run)
    return version


def _ensure_registered_model(mlf, name: str, task: str) -> None:
    """Create ``name`` (tagged with its task) unless it exists; refuse a model of another task."""
    from mlflow.exceptions import MlflowException

    try:
        existing = mlf.get_registered_model(name)
    except MlflowException as err:
        if not is_not_found(err):
            raise server_error(err, f"reading registered model {name!r}") from None
        try:
            mlf.create_registered_model(name, tags={"task": task})
            return
        except MlflowException as create_err:
            if getattr(create_err, "error_code", "") != "RESOURCE_ALREADY_EXISTS":
                raise server_error(create_err, f"creating registered model {name!r}") from None
            existing = mlf.get_registered_model(name)  # created concurrently elsewhere
    held = (existing.tags or {}).get("task")
    if held and held != task:
        raise RegistryError(f"registered model {name!r} holds {held} models, not {task}")
    if not held:
        mlf.set_registered_model_tag(name, "task", task)


def _pip_requirements() -> list[str]:
    """Pinned to what runs here; given explicitly so MLflow does not probe in a subprocess."""
    from importlib.metadata import PackageNotFoundError, version

    reqs = []
    for pkg in ("torch", "torchvision", "timm", "safetensors", "numpy", "mlflow"):
        try:
            reqs.append(f"{pkg}=={version(pkg).split('+')[0]}")
        except PackageNotFoundError:
            reqs.append(pkg)
    return reqs


# ------------------------------------------------------------------ resolve / fetch
def parse_uri(uri: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` → ``(name, alias, version)``."""
    match = _URI.match(uri.strip())
    if not match:
        raise RegistryError(
            f"{uri!r} is not a registry URI: use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    return match["name"], match["alias"], match["version"]


def get_registered_model(name: str, *, tracking_uri: str | None = None):
    """The ``RegisteredModel`` or a :class:`RegistryError` saying it does not exist."""
    from mlflow.exceptions import MlflowException

    try:
        return client(tracking_uri).get_registered_model(name)
    except MlflowException as err:
        if is_not_found(err):
            raise RegistryError(f"registered model {name!r} does not exist") from None
        raise server_error(err, f"reading registered model {name!r}") from None


def get_version(name: str, version: str | int, *, tracking_uri: str | None = None):
    """The ``ModelVersion`` or a :class:`RegistryError` naming what does not exist."""
    from mlflow.exceptions import MlflowException

    mlf = client(tracking_uri)
    get_registered_model(name, tracking_uri=tracking_uri)
    if not str(version).isdigit():
        raise RegistryError(f"version must be a number, got {version!r}")
    try:
        return mlf.get_model_version(name, str(version))
    except MlflowException as err:
        if is_not_found(err):
            raise RegistryError(f"registered model {name!r} has no version {version}") from None
        raise server_error(err, f"reading {name} version {version}") from None


def resolve_uri(uri: str, *, tracking_uri: str | None = None) -> ResolvedModel:
    """Resolve an alias or version URI to one fixed version (checked to exist)."""
    from mlflow.exceptions import MlflowException

    name, alias, version = parse_uri(uri)
    if version is not None:
        return ResolvedModel(name, get_version(name, version, tracking_uri=tracking_uri).version)
    mlf = client(tracking_uri)
    get_registered_model(name, tracking_uri=tracking_uri)
    try:
        mv = mlf.get_model_version_by_alias(name, alias)
    except MlflowException as err:
        if is_not_found(err):
            raise RegistryError(f"registered model {name!r} has no alias @{alias}") from None
        raise server_error(err, f"resolving {name}@{alias}") from None
    return ResolvedModel(name, str(mv.version), alias)


def _cache_ok(path: Path) -> bool:
    try:
        read_meta(path)
    except CheckpointError:
        return False
    return (path / WEIGHTS_FILE).is_file()


def fetch_checkpoint(
    name: str, version: str | int, *, cache_dir: str | Path, tracking_uri: str | None = None
) -> Path:
    """The version's checkpoint directory under ``cache_dir/NAME/VERSION`` (downloaded once).

    A complete cached copy is returned without contacting the server; a download lands in a
    temporary directory first and is renamed into place, so a crash never leaves a partial
    cache entry behind.
    """
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    from components.tracking.packaging import CHECKPOINT_ARTIFACT

    target = Path(cache_dir) / name / str(version)
    if _cache_ok(target):
        return target
    get_version(name, version, tracking_uri=tracking_uri)
    model_root = client(tracking_uri).get_model_version_download_uri(name, str(version))
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{version}-", dir=target.parent))
    try:
        try:
            mlflow.artifacts.download_artifacts(
                artifact_uri=f"{model_root.rstrip('/')}/artifacts/{CHECKPOINT_ARTIFACT}",
                dst_path=str(staging), tracking_uri=tracking_uri,
            )
        except (MlflowException, OSError) as err:
            raise RegistryError(
                f"{name} version {version}: cannot download its checkpoint artifacts "
                f"({type(err).__name__}: {str(err).splitlines()[0][:200]})"
            ) from None
        got = staging / CHECKPOINT_ARTIFACT
        if not _cache_ok(got):
            raise RegistryError(
                f"{name} version {version}: its artifacts hold no complete checkpoint "
                f"({WEIGHTS_FILE} + {META_FILE})"
            )
        if _cache_ok(target):  # another process (a second replica) finished first
            return target
        if target.exists():  # an incomplete leftover
            shutil.rmtree(target, ignore_errors=True)
        try:
            got.rename(target)
        except OSError:
            if not _cache_ok(target):
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def load_registered(
    uri: str, *, cache_dir: str | Path, tracking_uri: str | None = None,
    device: str = "cpu", task: str | None = None,
) -> tuple[Any, CheckpointMeta, ResolvedModel]:
    """``models:/...`` → ``(torch model in eval mode, meta, resolved version)``.

    ``task`` (optional) is checked against the checkpoint's: a detector is never loaded
    where a classifier is expected.
    """
    from components.tracking.packaging import model_from_checkpoint

    resolved = resolve_uri(uri, tracking_uri=tracking_uri)
    path = fetch_checkpoint(
        resolved.name, resolved.version, cache_dir=cache_dir, tracking_uri=tracking_uri
    )
    meta = read_meta(path)
    if task is not None and meta.task != task:
        raise RegistryError(f"{resolved.uri} is a {meta.task} model, not {task}")
    model, meta = model_from_checkpoint(path, device=device)
    return model, meta, resolved
