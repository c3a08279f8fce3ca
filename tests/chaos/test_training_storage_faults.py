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

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
FAULT_S = 4.0


def _rst(sock: socket.socket) -> None:
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # linger 0: the peer sees a connection reset
    except OSError:
        pass


class ResettingProxy:
    """Loopback TCP proxy to ``target``; resets (RST) the first ``reset_first`` connections,
    and during a :meth:`fail_for` window every open and every new connection."""

    def __init__(self, target_port: int, reset_first: int = 0) -> None:
        self.target_port, self.reset_first = target_port, reset_first
        self.accepted = self.reset = 0
        self.fail_until = 0.0
        self.open: set[socket.socket] = set()
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
            if self.reset < self.reset_first or time.monotonic() < self.fail_until:
                self.reset += 1
                _rst(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.open.add(client)
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

    def fail_for(self, seconds: float) -> None:
        """A network fault: reset every open connection, refuse new ones for ``seconds``."""
        self.fail_until = time.monotonic() + seconds
        for sock in list(self.open):
            self.open.discard(sock)
            self.reset += 1
            _rst(sock)

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


def test_training_run_finishes_through_storage_faults(ray_cluster, s3_server, synth_dataset, monkeypatch):
    """A real run with ``s3://`` storage through the proxy: once the first checkpoint is in
    the bucket, every connection is reset and new ones refused for FAULT_S; with
    ``run.max_failures=0`` a failed upload would fail the run, so finishing means the
    uploads were retried through the fault."""
    import boto3

    from components.training.config import load_train_config
    from components.training.trainer import run_training

    _bucket(s3_server, "ckpt-run")
    proxy = ResettingProxy(int(s3_server.rsplit(":", 1)[1]))
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{proxy.port}")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{proxy.port}")
    s3 = boto3.client("s3", endpoint_url=s3_server)  # the watcher looks past the proxy
    fault: dict = {}

    def inject() -> None:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            keys = [o["Key"] for o in s3.list_objects_v2(Bucket="ckpt-run").get("Contents", [])]
            if any(storage.MANIFEST in k for k in keys):
                fault["at"] = time.monotonic()
                proxy.fail_for(FAULT_S)
                return
            time.sleep(0.2)

    watcher = threading.Thread(target=inject, daemon=True)
    watcher.start()
    try:
        cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", [
            f"data.root={synth_dataset}",
            # credentials in the URI: the session's Ray processes started before the S3
            # server's environment was set, and the filesystem carries them to the workers
            "run.storage_path=s3://test:test@ckpt-run/runs", "run.name=s3-faults",
            "epochs=2", "checkpoint.every_n_steps=5", "run.max_failures=0", "data.augment.enabled=false",
            "run.log_every_n_steps=3"])
        started = time.monotonic()
        summary = run_training(cfg)
        seconds = time.monotonic() - started
    finally:
        watcher.join(timeout=5)
        proxy.close()
    assert "at" in fault and proxy.reset > 0, "the fault never hit the run"
    fs, run = pafs.S3FileSystem(endpoint_override=s3_server), "ckpt-run/runs/s3-faults"
    ckpts = [e.path for e in fs.get_file_info(pafs.FileSelector(run, allow_not_found=True))
             if storage.checkpoint_step(e.base_name) >= 0]
    assert ckpts and all(storage.checkpoint_complete(fs, c)[0] for c in ckpts), ckpts
    assert summary["checkpoint"].startswith("s3://ckpt-run/runs/s3-faults/checkpoint_step")
    print(f"storage-faults run: {summary['steps']} steps in {seconds:.1f} s, {proxy.reset} connections reset "
          f"over a {FAULT_S:.0f} s fault, {len(ckpts)} checkpoints kept, all complete")
