"""Run storage: where checkpoints and the run record live, checked before workers start.

``storage_path`` is object storage (``s3://``, ``gs://``, ... through pyarrow's filesystem
layer) or a local/shared directory. On a cluster of more than one node a local path must be
a volume every node sees: the driver writes a probe file and a task pinned to each other
node must read it back, otherwise the run stops with a clear message before training.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs


class StorageError(ValueError):
    """``storage_path`` is not usable by every worker of this cluster."""


RUN_RECORD = "vitpipe_run.json"


def is_uri(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def normalize(path: str) -> str:
    """Local paths → absolute (``~`` expanded); URIs unchanged."""
    if is_uri(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(os.path.expanduser(path)).resolve())


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a normalised storage path."""
    if is_uri(path):
        try:
            return pafs.FileSystem.from_uri(path)
        except Exception as err:  # pyarrow raises several types for bad URIs
            raise StorageError(f"storage_path {path!r} is not a usable URI: {err}") from err
    return pafs.LocalFileSystem(), path


def in_storage(storage_path: str, path: str) -> str:
    """``path`` as Ray Train reports it (inside the filesystem, no scheme) → a path or URI
    that names it for a user or a later run: ``s3://bucket/run/checkpoint_…``."""
    if is_uri(storage_path) and "://" not in path:
        return f"{storage_path.split('://', 1)[0]}://{path.lstrip('/')}"
    return path


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


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
