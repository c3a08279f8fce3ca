"""Run storage: where checkpoints and the run record live, checked before workers start.

``storage_path`` is object storage (``s3://``, ``gs://``, ... through pyarrow's filesystem
layer) or a local/shared directory. On a cluster of more than one node a local path must be
a volume every node sees: the driver writes a probe file and a task pinned to each other
node must read it back, otherwise the run stops with a clear message before training.

Checkpoints in object storage: Ray Train uploads them through the pyarrow filesystem that
:func:`train_filesystem` builds, which retries a failed S3 request with backoff
(``STORAGE_MAX_ATTEMPTS``). Each checkpoint carries a manifest (:data:`MANIFEST`: its files
and their sizes); a checkpoint whose manifest is missing or names a file that is absent or
short (an upload cut off midway) is never resumed from (:func:`checkpoint_complete`,
:func:`latest_complete_checkpoint`).
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs

from components.core import fs as fs_
from components.core.fs import is_uri, join, normalize  # noqa: F401 - part of this module's API


class StorageError(ValueError):
    """``storage_path`` is not usable by every worker of this cluster."""


RUN_RECORD = "vitpipe_run.json"
MANIFEST = "vitpipe_manifest.json"
CHECKPOINT_PREFIX = "checkpoint_step"
STORAGE_MAX_ATTEMPTS = 10  # per S3 request; the delay between attempts grows up to 20 s


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a normalised storage path."""
    try:
        return fs_.filesystem(path)
    except Exception as err:  # pyarrow raises several types for bad URIs
        raise StorageError(f"storage_path {path!r} is not a usable URI: {err}") from err


def in_storage(storage_path: str, path: str) -> str:
    """``path`` as Ray Train reports it (inside the filesystem, no scheme) → a path or URI
    that names it for a user or a later run: ``s3://bucket/run/checkpoint_…``."""
    if is_uri(storage_path) and "://" not in path:
        return f"{storage_path.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


def write_text(path: str, text: str) -> None:
    fs, inner = filesystem(path)
    parent = inner.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    with fs.open_output_stream(inner) as out:
        out.write(text.encode())


def read_text(path: str) -> str | None:
    fs, inner = filesystem(path)
    info = fs.get_file_info(inner)
    if info.type != pafs.FileType.File:
        return None
    with fs.open_input_stream(inner) as src:
        return src.read().decode()


def delete(path: str) -> None:
    fs, inner = filesystem(path)
    try:
        fs.delete_file(inner)
    except (FileNotFoundError, OSError):
        pass


def read_run_record(run_dir: str) -> dict[str, Any] | None:
    text = read_text(join(run_dir, RUN_RECORD))
    return json.loads(text) if text else None


def write_run_record(run_dir: str, record: dict[str, Any]) -> None:
    write_text(join(run_dir, RUN_RECORD), json.dumps(record, indent=1, sort_keys=True))


def _probe_exists(path: str) -> tuple[str, bool]:
    import ray

    return ray.get_runtime_context().get_node_id(), Path(path).is_file()


def check_storage(storage_path: str) -> str:
    """Check ``storage_path`` can be written here and seen by every alive Ray node.

    Returns the normalised path. Raises :class:`StorageError` with the reason otherwise.
    Call after ``ray.init`` (the node check is skipped when Ray is not initialised).
    """
    path = normalize(storage_path)
    probe = join(path, f".vitpipe_probe_{uuid.uuid4().hex}")
    try:
        write_text(probe, "probe")
        if read_text(probe) != "probe":
            raise StorageError(f"storage_path {path}: a probe file written there reads back wrong")
    except StorageError:
        raise
    except Exception as err:
        raise StorageError(
            f"storage_path {path} is not writable from the driver: {type(err).__name__}: {err}"
        ) from err
    try:
        if not is_uri(path):
            _check_nodes_see(path, probe)
    finally:
        delete(probe)
    return path


def _check_nodes_see(path: str, probe: str) -> None:
    import ray

    if not ray.is_initialized():
        return
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    if len(nodes) <= 1:
        return
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    check = ray.remote(num_cpus=0)(_probe_exists)
    refs = [
        check.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(probe)
        for n in nodes
    ]
    blind = [node for node, seen in ray.get(refs, timeout=120) if not seen]
    if blind:
        raise StorageError(
            f"storage_path {path} is a local directory that {len(blind)} of {len(nodes)} nodes "
            "cannot see: on a multi-node cluster use object storage (s3://bucket/prefix, "
            "gs://...) or a volume mounted on every node (e.g. NFS/EFS at the same path)"
        )


class RetryingS3FileSystem(pafs.S3FileSystem):
    """pyarrow's S3 filesystem whose retry strategy survives being sent to Ray Train's
    workers (pyarrow's own pickling rebuilds it with the default strategy, 3 attempts)."""

    def __init__(self, *, max_attempts: int, **options: Any) -> None:
        super().__init__(retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=max_attempts), **options)
        self.max_attempts = max_attempts

    def __reduce__(self):
        return _retrying_s3, (super().__reduce__()[1][0], self.max_attempts)


def _retrying_s3(options: dict[str, Any], max_attempts: int) -> RetryingS3FileSystem:
    return RetryingS3FileSystem(max_attempts=max_attempts, **options)


def train_filesystem(path: str, max_attempts: int = STORAGE_MAX_ATTEMPTS) -> tuple[pafs.FileSystem | None, str]:
    """``(filesystem, path inside it)`` for Ray Train's ``RunConfig(storage_filesystem=...)``:
    for ``s3://`` an S3 filesystem that retries failed requests (connection refused or
    reset, 5xx, throttling) ``max_attempts`` times with backoff; otherwise ``(None, path)``
    and Ray Train builds its own."""
    if not path.startswith("s3://"):
        return None, path
    fs, inner = filesystem(path)  # endpoint, region, scheme: from the URI and the environment
    return RetryingS3FileSystem(max_attempts=max_attempts, **fs.__reduce__()[1][0]), inner


def write_manifest(directory: str | Path, *, world_size: int) -> None:
    """Rank 0, last into its checkpoint directory: every file there with its size, and the
    per-rank files the other ranks add (Ray Train merges the ranks' directories)."""
    directory = Path(directory)
    files = {p.name: p.stat().st_size for p in sorted(directory.iterdir()) if p.is_file() and p.name != MANIFEST}
    ranks = [f"rng_rank{r}.{ext}" for r in range(1, world_size) for ext in ("safetensors", "json")]
    (directory / MANIFEST).write_text(json.dumps({"files": files, "rank_files": ranks}, indent=1))


def checkpoint_complete(fs: pafs.FileSystem, path: str) -> tuple[bool, str]:
    """Whether the checkpoint at ``path`` (inside ``fs``) holds every file its manifest names,
    at its size; returns ``(complete, why not)``."""
    try:
        infos = {i.base_name: i for i in fs.get_file_info(pafs.FileSelector(path, allow_not_found=True))}
    except OSError as err:
        return False, f"cannot list it: {err}"
    if MANIFEST not in infos:
        return False, f"no {MANIFEST} (an upload cut off before it finished)"
    with fs.open_input_stream(f"{path.rstrip('/')}/{MANIFEST}") as src:
        manifest = json.loads(src.read().decode())
    for name, size in manifest["files"].items():
        if name not in infos or infos[name].size != size:
            return False, f"{name} missing or short"
    missing = [n for n in manifest.get("rank_files", []) if n not in infos]
    return (False, f"{missing[0]} missing") if missing else (True, "")


def checkpoint_step(name: str) -> int:
    """``checkpoint_step0000120_epoch3`` → 120 (-1 for other names)."""
    digits = name[len(CHECKPOINT_PREFIX):].split("_", 1)[0]
    return int(digits) if name.startswith(CHECKPOINT_PREFIX) and digits.isdigit() else -1


def latest_complete_checkpoint(fs: pafs.FileSystem, run_path: str) -> str | None:
    """The highest-step complete checkpoint under ``run_path`` (inside ``fs``), or None."""
    try:
        entries = fs.get_file_info(pafs.FileSelector(run_path, allow_not_found=True))
    except OSError:
        return None
    dirs = sorted((e for e in entries if e.type == pafs.FileType.Directory and checkpoint_step(e.base_name) >= 0),
                  key=lambda e: checkpoint_step(e.base_name), reverse=True)
    return next((e.path for e in dirs if checkpoint_complete(fs, e.path)[0]), None)
