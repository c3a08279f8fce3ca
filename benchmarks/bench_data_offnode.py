"""Training step time with the data tasks on the trainer's node vs on another node.

A real two-node Ray cluster on loopback: ``ray start --head`` (node ``train``, the training
worker's node) and ``ray start --address`` (node ``data``). Each node is pinned to its own
physical core with ``taskset`` (every Ray process inherits its node's CPU affinity), so the
two nodes do not share cores, as two machines would not. One Ray Train worker (1 thread)
trains a classifier on the synthetic set's patch batches, fed by ``build_dataset``'s decode +
augment + patchify tasks, which ``data.node_labels`` places:

* ``on-node``: the data tasks run on the trainer's node (a single-machine run);
* ``off-node``: they run on the data node; the trainer's core only trains.

Both runs alternate (on, off, on, off, ...), each a fresh ``TorchTrainer.fit`` with a warm-up
of ``--warmup`` steps, then ``--steps`` timed steps. A step's time is from the end of the
previous step to the end of this one, so waiting for data is included.

Run: ``python benchmarks/bench_data_offnode.py`` → ``benchmarks/results/data_offnode.json``
(about 4 minutes on 2 cores). Needs Linux (``taskset``) and at least 2 CPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
# Token auth for the cluster this script starts; Ray reads these when it is first imported.
os.environ["RAY_AUTH_MODE"] = "token"
os.environ["RAY_AUTH_TOKEN"] = uuid.uuid4().hex

RAY = str(Path(sys.executable).with_name("ray"))
LABEL = "vitpipe-role"


def _start_node(args: list[str], core: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(["taskset", "-c", str(core), RAY, *args], env=env,
                            stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)


def _stop(proc: subprocess.Popen, temp_dir: str) -> None:
    try:
        os.killpg(os.getpgid(proc.pid), signal.SIGTERM)
        proc.wait(timeout=30)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        try:
            os.killpg(os.getpgid(proc.pid), signal.SIGKILL)
        except ProcessLookupError:
            pass
    # Ray daemons that left the process group still name our temp dir on their command line.
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if temp_dir in cmd:
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except ProcessLookupError:
                    pass


class Cluster:
    """Head (label ``train``, core 0, the one ``trainer`` slot) + a node (label ``data``, core 1)."""

    def __init__(self, root: Path, cpus_per_node: int):
        from components.core.rayjobs import HEAD_PORTS, head_start_args
        from components.tracking.server import free_port

        self.env = dict(os.environ)
        self.head_dir = tempfile.mkdtemp(prefix="vp-bh-", dir="/tmp")
        self.node_dir = tempfile.mkdtemp(prefix="vp-bn-", dir="/tmp")
        ports = {name: free_port() for name in HEAD_PORTS}
        self.gcs = f"127.0.0.1:{ports['gcs']}"
        head = head_start_args(ports, num_cpus=cpus_per_node, object_store_memory=400_000_000,
                               temp_dir=self.head_dir)
        self.head = _start_node(head + [f"--labels={LABEL}=train",
                                        f"--resources={json.dumps({'trainer': 1})}"],
                                0, self.env, root / "ray-head.log")
        self._wait(1)
        node = ["start", f"--address={self.gcs}", "--block", "--disable-usage-stats",
                "--node-ip-address=127.0.0.1", f"--num-cpus={cpus_per_node}", f"--labels={LABEL}=data",
                "--object-store-memory=400000000", f"--temp-dir={self.node_dir}",
                f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
                f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]
        self.node = _start_node(node, 1, self.env, root / "ray-node.log")
        self._wait(2)

    def _wait(self, nodes: int, timeout_s: float = 180) -> None:
        deadline, out = time.monotonic() + timeout_s, ""
        while time.monotonic() < deadline:
            done = subprocess.run([RAY, "status", f"--address={self.gcs}"], env=self.env,
                                  capture_output=True, text=True, timeout=60)
            out = done.stdout
            active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
            if done.returncode == 0 and active.count("node_") == nodes:
                return
            time.sleep(2)
        raise TimeoutError(f"the cluster did not reach {nodes} node(s): {out[-800:]}")

    def close(self) -> None:
        _stop(self.node, self.node_dir)
        _stop(self.head, self.head_dir)
        for path in (self.head_dir, self.node_dir):
            shutil.rmtree(path, ignore_errors=True)


def train_loop(config: dict) -> None:
    """One worker: classify each image's first box class from its patches; time every step."""
    import ray.train
    import torch
    import torch.nn.functional as F

    from components.data.loader import iter_batches
    from components.models.registry import build_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = build_model(config["model"], num_classes=config["num_classes"],
                        img_size=config["image_size"])
    optim = torch.optim.AdamW(model.parameters(), lr=1e-4)
    shard = ray.train.get_dataset_shard("train")
    times, last, steps = [], None, config["warmup"] + config["steps"]
    while len(times) < steps:
        for batch in iter_batches(shard, batch_size=config["batch_size"], task="detection",
                                  drop_last=True):
            grid = tuple(int(v) for v in batch["grid"][0])
            logits = model(batch["patches"], grid)
            loss = F.cross_entropy(logits, batch["classes"][:, 0])
            optim.zero_grad(set_to_none=True)
            loss.backward()
            optim.step()
            now = time.perf_counter()
            if last is not None:
                times.append(now - last)
            last = now
            if len(times) >= steps:
                break
    # Both nodes share this machine's disk: the step times go to a file the driver reads.
    Path(config["out_file"]).write_text(json.dumps(times[config["warmup"]:]))


def run_once(cfg_data, placement: str, args, storage: str) -> dict:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from components.data.dataset import build_dataset

    data_cfg = cfg_data.model_copy(update={"node_labels": {LABEL: placement}})
    bundle = build_dataset(data_cfg, "train", training=True)
    out_file = str(Path(storage) / f"steps-{placement}-{uuid.uuid4().hex[:6]}.json")
    Path(storage).mkdir(parents=True, exist_ok=True)
    trainer = TorchTrainer(
        train_loop,
        train_loop_config={"model": args.model, "num_classes": len(bundle.class_names),
                           "image_size": args.image_size, "batch_size": args.batch_size,
                           "warmup": args.warmup, "steps": args.steps, "out_file": out_file},
        scaling_config=ScalingConfig(num_workers=1, resources_per_worker={"CPU": 1, "trainer": 1}),
        datasets={"train": bundle.dataset},
        run_config=RunConfig(name=f"offnode-{placement}-{uuid.uuid4().hex[:6]}", storage_path=storage),
    )
    trainer.fit()
    times = json.loads(Path(out_file).read_text())
    return {"median_step_s": statistics.median(times), "mean_step_s": statistics.fmean(times),
            "steps": len(times)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_tiny_patch16_224")
    parser.add_argument("--num-images", type=int, default=384)
    parser.add_argument("--source-size", type=int, default=320, help="synthetic image side")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "data_offnode.json"))
    args = parser.parse_args()
    if (os.cpu_count() or 1) < 2 or shutil.which("taskset") is None:
        print("needs 2 CPUs and taskset", file=sys.stderr)
        return 2

    import ray

    from components.data.config import DataConfig
    from components.data.synth import SynthConfig, synthesize

    began, load_start = time.perf_counter(), os.getloadavg()[0]
    work = Path(tempfile.mkdtemp(prefix="bench-offnode-"))
    cluster = None
    try:
        synthesize(work / "data", SynthConfig(seed=0, num_train=args.num_images, num_val=0,
                                             image_size=args.source_size))
        cfg = DataConfig(root=str(work / "data"), image_size=args.image_size, patch_size=16,
                         seed=0, validate_images=False)
        cluster = Cluster(work, cpus_per_node=2)
        ray.init(address=cluster.gcs, _node_ip_address="127.0.0.1", log_to_driver=False,
                 configure_logging=False)
        ray.data.DataContext.get_current().enable_progress_bars = False
        runs: dict[str, list[dict]] = {"train": [], "data": []}
        for _ in range(args.rounds):
            for placement in ("train", "data"):
                runs[placement].append(run_once(cfg, placement, args, str(work / "runs")))
                print(placement, runs[placement][-1], flush=True)
    finally:
        if ray.is_initialized():  # before the cluster goes: a driver that outlives its GCS aborts
            ray.shutdown()
        if cluster is not None:
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)

    on = statistics.median(r["median_step_s"] for r in runs["train"])
    off = statistics.median(r["median_step_s"] for r in runs["data"])
    result = {
        "benchmark": "data_offnode",
        "what": "training step time (s, data wait included), data tasks on the trainer's node vs another node",
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "python": platform.python_version(), "load_avg_1m_at_start": round(load_start, 2),
                    "load_avg_1m_at_end": round(os.getloadavg()[0], 2),
                    "layout": "2 Ray nodes on loopback, each pinned to its own core (taskset)"},
        "settings": vars(args),
        "on_node": {"median_step_s": round(on, 4), "runs": runs["train"]},
        "off_node": {"median_step_s": round(off, 4), "runs": runs["data"]},
        "speedup_off_vs_on": round(on / off, 3),
        "wall_s": round(time.perf_counter() - began, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("on_node", "off_node", "speedup_off_vs_on")}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
