"""Paths and URIs: the one filesystem layer under data, training storage and the CLI checks.

Local paths and every URI pyarrow understands (``file://``, ``s3://``, ``gs://``, ...) map
to ``(pyarrow filesystem, path inside it)``. The data layer adds its credential handling and
the safe joining of annotation file names (``components.data.fs``); training adds the run's
storage checks, retries and manifests (``components.training.storage``).
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow.fs as pafs


def has_scheme(uri: str) -> bool:
    """``uri`` names a scheme (``file://`` included)."""
    return "://" in uri


def is_uri(path: str) -> bool:
    """``path`` is a remote URI (``s3://``, ``gs://``, ...); ``file://`` counts as local."""
    return has_scheme(path) and not path.startswith("file://")


def normalize(path: str) -> str:
    """Local paths (``file://`` stripped, ``~`` expanded) → absolute; URIs without a trailing ``/``."""
    if is_uri(path):
        return path.rstrip("/")
    if path.startswith("file://"):
        path = path[len("file://"):]
    return str(Path(os.path.expanduser(path)).resolve())


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """``(pyarrow filesystem, path inside it)`` for a :func:`normalize`-d path. A URI pyarrow
    cannot open raises its own error (``ValueError``/``OSError``)."""
    if is_uri(path):
        return pafs.FileSystem.from_uri(path)
    return pafs.LocalFileSystem(), path


def join(base: str, *parts: str) -> str:
    """``base/part/...`` with ``/`` separators (URIs and POSIX paths alike)."""
    return "/".join([base.rstrip("/"), *parts])


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    """All bytes of one file; ``FileNotFoundError`` if it is missing or not a file."""
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.File:
        raise FileNotFoundError(path)
    with fs.open_input_stream(path) as f:
        return f.read()
