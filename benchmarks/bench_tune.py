"""The YOLOS recipe sweep as one Ray Tune search: ``pipelines/configs/tune_yolos.yaml``.

Runs the search with the pipeline's own driver (``components.tune.driver.run_tune``: a
``TorchTrainer`` per trial, ASHA, MLflow parent + child runs, the best trial registered)
against a real ``mlflow server`` on loopback and a local Ray (one trial at a time), on the embedded synthetic
dataset (synthesized once into ``--cache``), and writes the trials (sampled configs, status,
val loss, final COCO mAP / mAP50, steps), the best trial and the wall time as JSON.

``--compare-fifo`` runs the same trials (same sampler seed, so the same configs) with ASHA
off too, in the same process, and reports the wall-time ratio ASHA / no early stopping (of
the medians over ``--rounds``; the rounds alternate which search runs first) and whether
both picked the same best trial: what early stopping saved, and whether it kept the winner.

    python benchmarks/bench_tune.py --out /tmp/tune_smoke.json        # small: minutes on 2 cores
    python benchmarks/bench_tune.py --full --compare-fifo --rounds 2  # the config's size
        # → benchmarks/results/tune_yolos.json (4,000 images, 8 trials of 1,000 steps)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
CONFIG = ROOT / "pipelines" / "configs" / "tune_yolos.yaml"

SMALL = {"num_train": 96, "num_val": 24, "steps": 24, "samples": 2, "grace": 6}
FULL = {"num_train": 4000, "num_val": 200, "steps": 1000, "samples": 8, "grace": 250}


def _dataset(cache: Path, num_train: int, num_val: int) -> Path:
    from components.data.synth import SynthConfig, synthesize

    out = cache / f"synth-{num_train}-{num_val}"
    if not (out / "annotations" / "instances_val.json").is_file():
        synthesize(out, SynthConfig(seed=0, num_train=num_train, num_val=num_val, image_size=96))
    return out


def _search(overrides: list[str]) -> tuple[dict, float]:
    from components.tune.config import load_tune_config
    from components.tune.driver import run_tune

    cfg = load_tune_config(CONFIG, overrides)
    start = time.perf_counter()
    summary = run_tune(cfg)
    return summary, round(time.perf_counter() - start, 1)


def _brief(summary: dict, wall_s: float) -> dict:
    return {
        "wall_s": wall_s, "metric": summary["metric"], "mode": summary["mode"],
        "scheduler": summary["scheduler"],
        "trials": [{k: t[k] for k in ("trial_id", "status", "config", "metric", "step", "eval")}
                   for t in summary["trials"]],
        "best": None if summary["best"] is None else
        {k: summary["best"][k] for k in ("trial_id", "config", "metric", "eval")},
        "steps_trained": sum(float(t["step"] or 0) for t in summary["trials"]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="the config's size (4,000 images, 8 × 1,000 steps)")
    parser.add_argument("--compare-fifo", action="store_true", help="also run the same trials without ASHA")
    parser.add_argument("--rounds", type=int, default=1, help="searches per variant (order alternates)")
    parser.add_argument("--cache", default=str(Path(tempfile.gettempdir()) / "vitpipe-bench-tune"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "tune_yolos.json"))
    args = parser.parse_args(argv)
    size = FULL if args.full else SMALL
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    data = _dataset(cache, size["num_train"], size["num_val"])

    from components.tracking.server import MlflowServer

    work = Path(tempfile.mkdtemp(prefix="run-", dir=cache))
    server = MlflowServer(root=work / "mlflow").start()
    common = [f"data.root={data}", f"run.storage_path={work / 'runs'}", f"mlflow.tracking_uri={server.uri}",
              f"search.num_samples={size['samples']}"]
    if not args.full:
        common += [f"max_steps={size['steps']}", "epochs=100", "run.log_every_n_steps=3",
                   f"search.scheduler.grace_period={size['grace']}", f"search.scheduler.max_t={size['steps']}"]
    common.append("search.max_concurrent_trials=1")
    import ray

    # Spare logical CPUs: a trial ASHA stops can leave its workers' placement group reserved
    # until the search ends (docs/tune.md, "Known gaps"); the next trials must still fit.
    ray.init(_node_ip_address="127.0.0.1", num_cpus=(os.cpu_count() or 1) + 4, configure_logging=False)
    variants = {"asha": [], "fifo": ["search.scheduler.enabled=false", "registry.enabled=false"]}
    # Rounds alternate the order (asha, fifo), (fifo, asha), ...: neither always runs first.
    order = [["asha", "fifo"] if r % 2 == 0 else ["fifo", "asha"] for r in range(args.rounds)] \
        if args.compare_fifo else [["asha"]] * args.rounds
    runs: dict[str, list[dict]] = {"asha": [], "fifo": []}
    try:
        for r, names in enumerate(order):
            for name in names:
                summary, wall = _search(common + variants[name] + [f"run.name=bench-{name}-r{r}"])
                runs[name].append(_brief(summary, wall))
        out = {"benchmark": "tune_yolos", "config": str(CONFIG.relative_to(ROOT)),
               "size": "full" if args.full else "small", **size, "rounds": args.rounds, "order": order,
               "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                           "python": platform.python_version()},
               "asha": runs["asha"]}
        if args.compare_fifo:
            out["fifo"] = runs["fifo"]
            wall = {k: statistics.median(b["wall_s"] for b in v) for k, v in runs.items()}
            out["asha_vs_fifo_wall"] = round(wall["asha"] / wall["fifo"], 3)
            out["same_best_config"] = all((a["best"] or {}).get("config") == (f["best"] or {}).get("config")
                                          for a, f in zip(runs["asha"], runs["fifo"]))
        out["machine"]["load_avg_1m_at_end"] = round(os.getloadavg()[0], 2)
    finally:
        ray.shutdown()
        server.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=str) + "\n")
    print(json.dumps({k: out[k] for k in out if k in ("asha_vs_fifo_wall", "same_best_config")}
                     | {"asha_wall_s": [b["wall_s"] for b in out["asha"]], "out": args.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
