"""Build the production-readiness report: measure, train, render, log to MLflow.

``build_report(cfg, out_dir, tracking_uri=None)`` writes into ``out_dir``:
``results.json`` (every measured number), ``report.md``, ``report.html`` (self-contained),
``cost.png`` and ``training.png``; with a tracking URI, one MLflow run (experiment
``vitpipe-report``) gets the headline numbers as metrics and the files as artifacts.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import platform
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from components.data.config import with_boxes
from components.report.config import ReportConfig
from components.report.render import html_page, markdown, plot_cost, plot_training

log = logging.getLogger(__name__)
EXPERIMENT = "vitpipe-report"


@dataclass
class ReportFiles:
    out_dir: Path
    markdown: Path
    html: Path
    results: Path
    plots: dict[str, Path | None]
    mlflow_run_id: str | None = None


def machine_info() -> dict[str, Any]:
    import torch

    from components.core.device import cpu_has_fast_bf16

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), cpu)
    except OSError:
        pass
    try:
        import ray

        ray_version = ray.__version__
    except ImportError:  # pragma: no cover - ray is a dependency
        ray_version = "-"
    return {
        "cpu": cpu, "cores": os.cpu_count(), "memory_gib": _memory_gib(), "threads": torch.get_num_threads(),
        "fast_bf16": cpu_has_fast_bf16(), "python": platform.python_version(),
        "torch": torch.__version__, "ray": ray_version, "commit": _git_commit(),
        "loadavg_at_start": _load(),
    }


def _load() -> list[float] | None:
    """1-, 5- and 15-minute load averages."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _memory_gib() -> float | None:
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        return None


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


# ----------------------------------------------------------------------------- stages
def measure_costs(cfg: ReportConfig) -> list[dict[str, Any]]:
    """Every cost model measured in its own process (its own peak memory)."""
    from components.report.inference import measure_in_subprocess

    rows = []
    for entry in cfg.cost_models:
        log.info("measuring %s (%s) in a fresh process", entry.title, entry.name)
        result = measure_in_subprocess(
            entry.name, img_size=entry.img_size, precision=cfg.cost_precision, warmup_runs=cfg.warmup_runs,
            latency_runs=cfg.latency_runs, batch_large=entry.batch_large,
            throughput_batches=cfg.throughput_batches, threads=cfg.threads, timeout_s=cfg.cost_timeout_s)
        rows.append({"label": entry.title, "key": entry.name, "measured": asdict(result)})
    return rows


def _ensure_ray() -> bool:
    """Start a small local Ray for the data layer unless one is connected; True if started here."""
    import ray

    if ray.is_initialized():
        return False
    if os.environ.get("RAY_ADDRESS"):  # a running cluster (the demo's): join it as a driver
        ray.init(address=os.environ["RAY_ADDRESS"], log_to_driver=False, configure_logging=False)
        return True
    # A private local instance for this process (token auth left to Ray's default).
    ray.init(num_cpus=max(1, min(2, os.cpu_count() or 1)), include_dashboard=False,
             object_store_memory=300_000_000, log_to_driver=False, configure_logging=False)
    return True


def train_families(cfg: ReportConfig, out_dir: Path) -> list[dict[str, Any]]:
    from components.report.training import TrainingSpec, load_task_data, train_to_target

    root = Path(cfg.data_root) if cfg.data_root else out_dir / "synth"
    if cfg.data_root is None and not (root / "annotations").exists():
        from components.data.synth import SynthConfig, synthesize

        synthesize(root, SynthConfig(seed=cfg.seed, num_train=cfg.synth_num_train,
                                     num_val=cfg.synth_num_val, image_size=cfg.detection_image_size))
    started = _ensure_ray()
    try:
        data = {}
        for task, size in (("classification", cfg.classification_image_size),
                           ("detection", cfg.detection_image_size)):
            if any(f.task == task for f in cfg.families):
                data[task] = load_task_data(root, task, image_size=size, batch_size=cfg.batch_size,
                                            passes=min(cfg.augment_passes, cfg.max_epochs), seed=cfg.seed)
    finally:
        if started:
            import ray

            ray.shutdown()
    rows = []
    for family in cfg.families:
        spec = TrainingSpec(family.tiny, family.task, family.lr, family.weight_decay, family.clip_grad_norm,
                            overrides=dict(family.overrides), match_repeats=family.match_repeats)
        target = {"classification": cfg.target_top1, "detection": cfg.target_map50}[family.task]
        log.info("training %s (%s) to %s", family.title, family.tiny, target)
        result = train_to_target(spec, data[family.task], target=target, max_epochs=cfg.max_epochs,
                                 time_budget_s=cfg.time_budget_s, precision=cfg.precision, seed=cfg.seed)
        task_data = data[family.task]
        rows.append({"label": family.title, "key": family.key, "conv_bias": family.conv_bias,
                     "num_train": task_data.num_train, "image_size": task_data.image_size,
                     "num_val": sum(int(b["patches"].shape[0]) for b in task_data.val_batches),
                     "chance": round(1 / data[family.task].num_classes, 4) if not with_boxes(family.task) else None,
                     "result": asdict(result)})
    return rows


def log_to_mlflow(files: ReportFiles, results: dict, tracking_uri: str) -> str:
    import mlflow
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT)
    run = client.create_run(experiment_id, run_name=f"report-{results['mode']}",
                            tags={"vitpipe.kind": "report", "mlflow.source.git.commit": results["machine"]["commit"]})
    run_id = run.info.run_id
    try:
        client.log_param(run_id, "mode", results["mode"])
        client.log_param(run_id, "cpu", results["machine"]["cpu"][:250])
        metrics = []
        now = int(time.time() * 1000)
        for row in results["cost"]:
            m, key = row["measured"], row["key"]
            metrics += [mlflow.entities.Metric(f"{key}.{name}", float(m[name]), now, 0) for name in ("params", "gmacs")]
            for prec, p in m["by_precision"].items():
                for name in ("latency_ms_b1", "throughput", "peak_rss_mib_large"):
                    metrics.append(mlflow.entities.Metric(f"{key}.{prec}.{name}", float(p[name]), now, 0))
        for row in results["training"]:
            t, key = row["result"], row.get("key", row["result"]["model"])
            metrics.append(mlflow.entities.Metric(f"{key}.best_{t['metric_name']}", float(t["best_metric"]), now, 0))
            if t["time_to_target_s"] is not None:
                metrics.append(mlflow.entities.Metric(f"{key}.time_to_target_s", float(t["time_to_target_s"]), now, 0))
        for i in range(0, len(metrics), 500):
            client.log_batch(run_id, metrics=metrics[i:i + 500])
        for path in (files.markdown, files.html, files.results, *[p for p in files.plots.values() if p]):
            client.log_artifact(run_id, str(path), artifact_path="report")
        client.set_terminated(run_id, "FINISHED")
    except Exception:
        client.set_terminated(run_id, "FAILED")
        raise
    return run_id


# ----------------------------------------------------------------------------- entry
def build_report(cfg: ReportConfig, out_dir: str | Path, *, tracking_uri: str | None = None,
                 mode: str = "full") -> ReportFiles:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    results: dict[str, Any] = {
        "mode": mode, "config": cfg.model_dump(), "machine": machine_info(),
        "generated": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }
    import torch

    saved_threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        results["machine"]["threads"] = torch.get_num_threads()
        results["cost"] = measure_costs(cfg) if cfg.cost and cfg.cost_models else []
        results["training"] = train_families(cfg, out_dir) if cfg.train and cfg.families else []
    finally:
        torch.set_num_threads(saved_threads)
    results["machine"]["loadavg_at_end"] = _load()
    results["elapsed_s"] = round(time.perf_counter() - start, 1)

    results_path = out_dir / "results.json"
    results_path.write_text(json.dumps(results, indent=1))
    plots = {"cost": plot_cost(results, out_dir / "cost.png"),
             "training": plot_training(results, out_dir / "training.png")}
    md_path = out_dir / "report.md"
    md_path.write_text(markdown(results, plots))
    html_path = out_dir / "report.html"
    html_path.write_text(html_page(results, plots))
    files = ReportFiles(out_dir=out_dir, markdown=md_path, html=html_path, results=results_path, plots=plots)
    if tracking_uri:
        files.mlflow_run_id = log_to_mlflow(files, results, tracking_uri)
    return files
