"""Filesystems: local paths and every URI pyarrow understands (``file://``, ``s3://``, ``gs://``).

A :class:`Location` pairs a ``pyarrow.fs.FileSystem`` with a root path. It is resolved ONCE
on the driver (where credentials and endpoints such as ``AWS_ENDPOINT_URL`` are read) and
shipped to Ray tasks as a picklable value, so workers need no environment of their own
(an ``AWS_ENDPOINT_URL`` endpoint and its credentials are spelled out in the S3 filesystem
for this; without one, workers use their own AWS credential chain as usual).
File names from annotation files are joined under the root by :func:`safe_join`, which
refuses names that would escape it.
"""

from __future__ import annotations

import os
import posixpath
from dataclasses import dataclass
from urllib.parse import urlparse

import pyarrow.fs as pafs

from components.core.fs import has_scheme, read_bytes

__all__ = ["Location", "PathEscapeError", "has_scheme", "join_uri", "read_bytes", "read_uri",
           "resolve", "safe_join", "uri_is_dir"]


class PathEscapeError(ValueError):
    """A file name that is absolute, a URI, or climbs out of its root with ``..``."""


def _s3_from_env(path: str) -> pafs.FileSystem | None:
    """An S3 filesystem with the endpoint/region/credentials of this process's environment
    spelled out, so that it still points there once pickled into a Ray worker whose
    environment lacks them (``AWS_ENDPOINT_URL[_S3]``: MinIO, moto, other S3-compatibles)."""
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not endpoint:
        return None
    parsed = urlparse(endpoint)
    kwargs = {"endpoint_override": parsed.netloc or parsed.path,
              "scheme": parsed.scheme or "https",
              "region": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
              or "us-east-1"}
    key, secret = os.environ.get("AWS_ACCESS_KEY_ID"), os.environ.get("AWS_SECRET_ACCESS_KEY")
    if key and secret:
        kwargs |= {"access_key": key, "secret_key": secret,
                   "session_token": os.environ.get("AWS_SESSION_TOKEN")}
    return pafs.S3FileSystem(**kwargs)


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """``uri`` (or a local path) → ``(filesystem, path within it)``."""
    if has_scheme(uri):
        try:
            fs, path = pafs.FileSystem.from_uri(uri)
            if uri.startswith(("s3://", "s3a://")):
                fs = _s3_from_env(path) or fs
            return fs, path
        except (ValueError, OSError) as err:  # pyarrow.ArrowInvalid is a ValueError
            raise FileNotFoundError(f"cannot open {uri}: {err}") from None
    return pafs.LocalFileSystem(), os.path.abspath(uri)


def join_uri(base: str, *parts: str) -> str:
    if has_scheme(base):
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)])
    return os.path.join(base, *parts)


def uri_is_dir(uri: str) -> bool:
    try:
        fs, path = resolve(uri)
        return fs.get_file_info(path).type == pafs.FileType.Directory
    except (FileNotFoundError, OSError):
        return False


def read_uri(uri: str) -> bytes:
    """All bytes of one file; ``FileNotFoundError`` if it is missing."""
    fs, path = resolve(uri)
    return read_bytes(fs, path)


def safe_join(root: str, file_name: str) -> str:
    """``root/file_name`` for a relative, non-escaping ``file_name`` (posix separators)."""
    if not isinstance(file_name, str) or not file_name.strip():
        raise PathEscapeError("empty file name")
    name = file_name.replace("\\", "/")
    if has_scheme(name) or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise PathEscapeError("file name escapes the image root")
    norm = posixpath.normpath(name)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise PathEscapeError("file name escapes the image root")
    return posixpath.join(root.rstrip("/"), norm) if root else norm


@dataclass(frozen=True)
class Location:
    """A filesystem and a root directory in it (picklable; resolve on the driver)."""

    fs: pafs.FileSystem
    root: str

    @classmethod
    def from_uri(cls, uri: str) -> "Location":
        fs, path = resolve(uri)
        return cls(fs, path)

    def path(self, file_name: str) -> str:
        return safe_join(self.root, file_name)

    def read(self, file_name: str) -> bytes:
        return read_bytes(self.fs, self.path(file_name))

    def is_dir(self) -> bool:
        return self.fs.get_file_info(self.root).type == pafs.FileType.Directory

    def list_files(self) -> list[str]:
        """Every file under the root, as paths relative to it (sorted)."""
        selector = pafs.FileSelector(self.root, recursive=True, allow_not_found=False)
        infos = self.fs.get_file_info(selector)
        prefix = self.root.rstrip("/") + "/"
        return sorted(i.path[len(prefix):] for i in infos
                      if i.type == pafs.FileType.File and i.path.startswith(prefix))
