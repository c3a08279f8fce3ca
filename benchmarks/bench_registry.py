"""Registry load paths: what a serving replica pays to get the ``@champion`` model.

Against a real ``mlflow server`` on loopback (SQLite + local artifacts), for one registered
model, each timed ``--repeats`` times (median reported):

- ``pyfunc_load`` (baseline): ``mlflow.pyfunc.load_model("models:/NAME@champion")``, which
  downloads the whole logged model every time and rebuilds it;
- ``cold``: ``load_registered(...)`` with an empty cache: resolve the alias, download only the
  checkpoint artifact, rebuild the model;
- ``warm`` (a replica restart): ``load_registered(...)`` with the per-version cache in place:
  resolve the alias, no download, rebuild;
- ``fetch_cold`` / ``fetch_warm``: ``fetch_checkpoint`` alone (download vs cache hit).

Also the one-off ``register`` time. Run: ``python benchmarks/bench_registry.py [--model
vit_small_patch16_224]`` → ``benchmarks/results/registry.json`` (< 3 min here).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _timed(fn, repeats: int) -> dict[str, float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return {"median_s": round(statistics.median(times), 4), "min_s": round(min(times), 4),
            "runs": len(times)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="vit_small_patch16_224")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/registry.json"))
    args = parser.parse_args(argv)

    import mlflow
    import torch

    from components.core.checkpoint import CheckpointMeta, save_checkpoint
    from components.models import build_model
    from components.tracking.registry import fetch_checkpoint, load_registered, register_checkpoint
    from components.tracking.server import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    server = MlflowServer(root=work / "mlflow").start()
    try:
        os.environ["MLFLOW_TRACKING_URI"] = server.uri
        mlflow.set_tracking_uri(server.uri)
        torch.manual_seed(0)
        model = build_model(args.model, num_classes=10)
        size = model.img_size if isinstance(model.img_size, int) else model.img_size[0]
        meta = CheckpointMeta(
            model_name=args.model, task="classification", model_config={"num_classes": 10},
            class_names=[f"c{i}" for i in range(10)], image_size=int(size),
            patch_size=int(model.patch_size), mean=model.mean, std=model.std,
        )
        ckpt = save_checkpoint(work / "ckpt", model.state_dict(), meta)
        weights_mib = (ckpt / "model.safetensors").stat().st_size / 2**20
        name = "bench-classifier"
        start = time.perf_counter()
        version = register_checkpoint(ckpt, task="classification", registered_name=name)
        register_s = time.perf_counter() - start
        mlflow.MlflowClient().set_registered_model_alias(name, "champion", version)
        uri = f"models:/{name}@champion"
        cache = work / "cache"

        def cold():
            shutil.rmtree(cache, ignore_errors=True)
            load_registered(uri, cache_dir=cache)

        def warm():
            load_registered(uri, cache_dir=cache)

        results = {
            # (a fresh download each time, as MLflow does without dst_path, but inside `work`)
            "pyfunc_load": _timed(lambda: mlflow.pyfunc.load_model(uri, dst_path=tempfile.mkdtemp(dir=work)),
                                  args.repeats),
            "cold": _timed(cold, args.repeats),
        }
        warm()  # the cache is in place now
        results["warm"] = _timed(warm, args.repeats)

        def fetch_cold():
            shutil.rmtree(cache, ignore_errors=True)
            fetch_checkpoint(name, version, cache_dir=cache)

        # The download alone (no model rebuild), without and with the cache.
        results["fetch_cold"] = _timed(fetch_cold, args.repeats)
        results["fetch_warm"] = _timed(lambda: fetch_checkpoint(name, version, cache_dir=cache),
                                       args.repeats)
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)

    base = results["pyfunc_load"]["median_s"]
    report = {
        "benchmark": "registry",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "torch": torch.__version__, "mlflow": mlflow.__version__,
                    "note": "shared 2-core machine; other work ran at the same time"},
        "model": args.model, "weights_mib": round(weights_mib, 1),
        "register_s": round(register_s, 3),
        "results": results,
        "speedup_vs_pyfunc_load": {k: round(base / v["median_s"], 2)
                                   for k, v in results.items()},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
