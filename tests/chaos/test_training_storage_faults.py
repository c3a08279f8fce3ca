"""Object storage faults on the checkpoint path, against the loopback S3 server (moto).

- Uploads through a real TCP proxy that resets the first connections (a real network fault
  between the client and S3): the filesystem Ray Train uploads checkpoints with
  (``storage.train_filesystem``) retries with backoff and the checkpoint lands whole; the
  same copy with retries turned off fails, so the retries are what carried it.
- A checkpoint cut off midway (no manifest, or a file missing/short) is never resumed from:
  :func:`resumable_checkpoint` falls back to the latest complete one.
"""

from __future__ import annotations

import pickle
import socket
import threading
import time
from pathlib import Path

import pyarrow.fs as pafs
import pytest
import torch
from safetensors.torch import save_file

from components.training import storage
from components.training.reporting import resumable_checkpoint

pytestmark = pytest.mark.slow


class ResettingProxy:
    """Loopback TCP proxy to ``target``; resets (RST) the first ``reset_first`` connections."""

    def __init__(self, target_port: int, reset_first: int) -> None:
        self.target_port, self.reset_first = target_port, reset_first
        self.accepted = self.reset = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.5)
        self.port = self.sock.getsockname()[1]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            if self.reset < self.reset_first:
                self.reset += 1
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
                client.close()  # linger 0: the peer sees a connection reset
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()


def _checkpoint_dir(path: Path, step: int) -> Path:
    """A checkpoint directory as rank 0 writes it (weights, state, rng, manifest last)."""
    path.mkdir(parents=True)
    save_file({"w": torch.full((64, 64), float(step))}, str(path / "model.safetensors"))
    (path / "vitpipe.json").write_text(f'{{"step": {step}}}')
    (path / "train_state.json").write_text(f'{{"progress": {{"global_step": {step}}}}}')
    storage.write_manifest(path, world_size=1)
    return path


def _bucket(endpoint: str, name: str) -> None:
    import boto3

    boto3.client("s3", endpoint_url=endpoint).create_bucket(Bucket=name)


def _copy(fs: pafs.FileSystem, src: Path, dest: str) -> None:
    """How Ray Train persists a checkpoint (``pyarrow.fs.copy_files``, no upload threads on S3)."""
    fs.create_dir(dest)
    pafs.copy_files(str(src), dest, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs,
                    use_threads=False)


def test_checkpoint_upload_survives_connection_resets(s3_server, tmp_path):
    _bucket(s3_server, "ckpt-faults")
    src = _checkpoint_dir(tmp_path / "ckpt", 8)
    moto_port = int(s3_server.rsplit(":", 1)[1])

    proxy = ResettingProxy(moto_port, reset_first=3)
    try:
        uri = f"s3://ckpt-faults/run?endpoint_override=127.0.0.1:{proxy.port}&scheme=http"
        fs, _ = storage.train_filesystem(uri)
        fs = pickle.loads(pickle.dumps(fs))  # as Ray Train hands it to a worker
        assert isinstance(fs, storage.RetryingS3FileSystem) and fs.max_attempts == storage.STORAGE_MAX_ATTEMPTS
        started = time.monotonic()
        _copy(fs, src, "ckpt-faults/run/checkpoint_step0000008_mid")
        retry_s = time.monotonic() - started
        assert proxy.reset == 3 and proxy.accepted > 3  # the faults happened, then it went through
        assert storage.checkpoint_complete(fs, "ckpt-faults/run/checkpoint_step0000008_mid") == (True, "")
        print(f"storage-faults: 3 connection resets, upload took {retry_s:.1f} s")
    finally:
        proxy.close()

    proxy = ResettingProxy(moto_port, reset_first=100)  # the same fault, retries turned off
    try:
        fs, _ = storage.train_filesystem(
            f"s3://ckpt-faults/run?endpoint_override=127.0.0.1:{proxy.port}&scheme=http", max_attempts=1)
        with pytest.raises(OSError):
            _copy(fs, src, "ckpt-faults/run/checkpoint_step0000009_mid")
    finally:
        proxy.close()


def test_resume_never_uses_a_checkpoint_cut_off_midway(s3_server, tmp_path):
    from ray.train import Checkpoint

    _bucket(s3_server, "ckpt-resume")
    fs, run = storage.train_filesystem("s3://ckpt-resume/run")
    _copy(fs, _checkpoint_dir(tmp_path / "c8", 8), f"{run}/checkpoint_step0000008_mid")
    # An upload killed before its manifest: every other file is there.
    cut = _checkpoint_dir(tmp_path / "c12", 12)
    (cut / storage.MANIFEST).unlink()
    _copy(fs, cut, f"{run}/checkpoint_step0000012_mid")
    # An upload killed after the manifest but before the weights were whole.
    short = _checkpoint_dir(tmp_path / "c16", 16)
    (short / "model.safetensors").write_bytes((short / "model.safetensors").read_bytes()[:100])
    _copy(fs, short, f"{run}/checkpoint_step0000016_epoch2")

    assert storage.checkpoint_complete(fs, f"{run}/checkpoint_step0000012_mid")[0] is False
    assert storage.checkpoint_complete(fs, f"{run}/checkpoint_step0000016_epoch2")[0] is False
    assert storage.latest_complete_checkpoint(fs, run) == f"{run}/checkpoint_step0000008_mid"
    picked = resumable_checkpoint(Checkpoint(f"{run}/checkpoint_step0000016_epoch2", filesystem=fs))
    assert picked.path == f"{run}/checkpoint_step0000008_mid"
    whole = Checkpoint(f"{run}/checkpoint_step0000008_mid", filesystem=fs)
    assert resumable_checkpoint(whole) is whole
