"""Autoscaling under a load ramp: replicas, latency and throughput over time.

One run, loopback only, bounded (~4 min here):

1. a real ``mlflow server`` with a random-weight classifier (``--model``, default ViT-Ti/16
   at 128 px: heavy enough that the model, not the ingress, is the bottleneck) as ``@champion``;
   a local Ray cluster (``--ray-cpus`` logical CPUs); Serve on a free 127.0.0.1 port;
2. the classifier app as ``pipelines/configs/serve.yaml`` ships it (classifier only,
   ``one_model_config``), deployed twice in the same run:
   *baseline* — the model pinned at the shipped ``min_replicas``;
   *autoscaled* — the shipped ``autoscaling_config`` (or ``--set key=value`` edits);
3. each under the same ramp of closed-loop callers posting a PNG to ``/v1/classify``:
   (a 25 KB JPEG) ``--low-callers`` for ``--low-s``, ``--high-callers`` for ``--high-s``, then
   ``--low-callers`` again — until the replicas are back at ``min_replicas`` (autoscaled;
   at most ``downscale_delay_s + --settle-s``) or for ``--low-s`` (baseline);
4. RUNNING and STARTING replicas every 0.5 s from Serve's status API; p50/p99 latency, throughput and
   failures per phase; the high phase's autoscaled / baseline ratios; seconds from the
   ramp-up to the first added replica and from the ramp-down to ``min_replicas`` again →
   ``benchmarks/results/autoscale.json`` and a plot (replicas and latency over time) →
   ``benchmarks/results/autoscale.png``.

Note: the callers, the proxy, the ingress and every replica share this machine's cores, so
on a 2-core machine added replicas add queue slots and batching, not compute.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _machine import cpu_name  # noqa: E402  (benchmarks/, the script's own folder)
from _serve_load import (  # noqa: E402
    Callers, ReplicaSampler, replica_states, running_replicas, summarize,
)
from bench_serve import NAME, register_model, sample_image  # noqa: E402

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)
APP, MODEL = "vitpipe", "classifier"
JPEG = {"content-type": "image/jpeg"}


def shipped_config() -> dict:
    from components.serving.config_file import load_config, one_model_config

    return one_model_config(load_config(), MODEL)


def model_entry(config: dict) -> dict:
    return next(d for d in config["applications"][0]["deployments"] if d["name"] == MODEL)


def deploy(config: dict, tracking_uri: str, cache: Path, *, replicas: int | None,
           autoscaling: dict | None) -> None:
    from ray.serve.context import _get_global_client

    from components.serving.config_file import deploy_schema
    from components.serving.settings import SERVE_NODE_ENV

    schema = deploy_schema(
        config, model_uris={MODEL: f"models:/{NAME}@champion"},
        model_settings={"cache_dir": str(cache), "poll_interval_s": 0.0},
        env_vars={"MLFLOW_TRACKING_URI": tracking_uri, **SERVE_NODE_ENV},
        num_replicas={"ingress": 1, **({MODEL: replicas} if replicas else {})},
        autoscaling={MODEL: autoscaling} if autoscaling else None,
    )
    _get_global_client().deploy_apps(schema)


def app_running_since(deployed: float) -> bool:
    """The application finished deploying the config sent at ``deployed`` (epoch s)."""
    from ray import serve

    status = serve.status().applications.get(APP)
    return (status is not None and status.status == "RUNNING"
            and status.last_deployed_time_s >= deployed - 1.0)


def wait_until(condition, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.25)
    return True


def ramp(url: str, body: bytes, args, *, min_replicas: int, settle_s: float | None) -> dict:
    """One ramp; ``settle_s`` None: fixed low phases (baseline), else wait for scale-down."""
    sampler = ReplicaSampler(APP, MODEL, interval_s=0.5)
    marks, callers_at = {}, []
    with Callers(url, body, JPEG, max_callers=args.high_callers) as callers:
        for phase, count, seconds in (("low", args.low_callers, args.low_s),
                                      ("high", args.high_callers, args.high_s)):
            marks[phase] = time.monotonic()
            callers_at.append((marks[phase], count))
            callers.set(count)
            time.sleep(seconds)
        marks["low_again"] = time.monotonic()
        callers_at.append((marks["low_again"], args.low_callers))
        callers.set(args.low_callers)
        if settle_s is None:
            time.sleep(args.low_s)
        else:
            time.sleep(2.0)  # let the sampler see the high phase's replicas first
            wait_until(lambda: running_replicas(APP, MODEL) <= min_replicas, settle_s)
            time.sleep(2.0)
        marks["end"] = time.monotonic()
    samples = sampler.stop()
    t0 = marks["low"]
    names = ["low", "high", "low_again"]
    phases = {name: summarize(callers.answers, marks[name], marks[after])
              for name, after in zip(names, names[1:] + ["end"])}
    above = [t for t, n in samples if t >= marks["high"] and n > min_replicas]
    asked = [t for t, n in sampler.starting if t >= marks["high"] and n > 0]
    last_above = max((t for t, n in samples if n > min_replicas), default=marks["low_again"])
    back = [t for t, n in samples if t > max(last_above, marks["low_again"]) and n <= min_replicas]
    return {
        "phases": phases,
        "total": summarize(callers.answers, marks["low"], marks["end"]),
        "first_replica_started_after_s": round(asked[0] - marks["high"], 1) if asked else None,
        "first_replica_added_after_s": round(above[0] - marks["high"], 1) if above else None,
        "back_to_min_after_s": round(back[0] - marks["low_again"], 1) if back else None,
        "max_replicas_seen": max((n for _, n in samples), default=0),
        "replicas_over_time": [[round(t - t0, 2), n] for t, n in samples],
        "starting_over_time": [[round(t - t0, 2), n] for t, n in sampler.starting],
        "callers_over_time": [[round(t - t0, 2), n] for t, n in callers_at]
                             + [[round(marks["end"] - t0, 2), 0]],
        "latency_over_time": [[round(a.t - t0, 3), round(a.latency_s * 1e3, 1), a.status]
                              for a in sorted(callers.answers, key=lambda a: a.t)],
    }


def plot(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 6), sharex=True)
    for (name, run), color in zip(result["runs"].items(), ("tab:gray", "tab:blue")):
        t, n = np.array(run["replicas_over_time"]).T
        top.step(t, n, where="post", color=color, label=f"{name}: RUNNING")
        t, n = np.array(run["starting_over_time"]).T
        top.step(t, n, where="post", color=color, linestyle="--", label=f"{name}: STARTING")
        lat = np.array(run["latency_over_time"])
        bins = np.arange(0, lat[:, 0].max() + 2.0, 2.0)
        index = np.digitize(lat[:, 0], bins)
        p50 = [(bins[i - 1], np.percentile(lat[index == i, 1], 50)) for i in set(index)]
        p99 = [(bins[i - 1], np.percentile(lat[index == i, 1], 99)) for i in set(index)]
        for series, style in ((p50, "-"), (p99, ":")):
            xs, ys = zip(*sorted(series))
            bottom.plot(xs, ys, style, color=color,
                        label=f"{name}: {'p50' if style == '-' else 'p99'}")
    callers = np.array(result["runs"]["autoscaled"]["callers_over_time"])
    twin = top.twinx()
    twin.step(callers[:, 0], callers[:, 1], where="post", color="tab:orange", alpha=0.5)
    twin.set_ylabel("callers", color="tab:orange")
    top.set_ylabel("model replicas")
    top.legend(loc="upper left", fontsize=8)
    bottom.set_yscale("log")
    bottom.set_ylabel("latency, ms (2 s bins)")
    bottom.set_xlabel("seconds since the ramp started")
    bottom.legend(loc="upper right", fontsize=8, ncol=2)
    scaling = result["settings"]["autoscaling_config"]
    fig.suptitle(f"Load ramp {result['settings']['ramp']}; autoscaling "
                 f"target_ongoing_requests={scaling.get('target_ongoing_requests')}, "
                 f"delays up/down {scaling.get('upscale_delay_s')}/"
                 f"{scaling.get('downscale_delay_s')} s", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def parse_value(text: str):
    return yaml.safe_load(text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--low-callers", type=int, default=1)
    parser.add_argument("--high-callers", type=int, default=32)
    parser.add_argument("--low-s", type=float, default=5.0)
    parser.add_argument("--high-s", type=float, default=45.0,
                        help="long enough for an added replica to start (torch import, model "
                             "load, warm-up)")
    parser.add_argument("--settle-s", type=float, default=45.0,
                        help="after downscale_delay_s, longest wait for min_replicas")
    parser.add_argument("--ray-cpus", type=float, default=4,
                        help="logical CPUs of the local Ray node (replicas ask for fractions)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="edit the shipped autoscaling_config for this run")
    parser.add_argument("--model", default="vit_tiny_patch16_224",
                        help="registered model to serve (random weights); the default keeps "
                             "the model, not the ingress, the bottleneck at 32 callers")
    parser.add_argument("--img-size", type=int, default=128, help="the model's input size")
    parser.add_argument("--skip-baseline", action="store_true")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "autoscale.json"))
    args = parser.parse_args()

    import ray
    from ray import serve

    from components.tracking.server import MlflowServer, free_port

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    config = shipped_config()
    scaling = dict(model_entry(config)["autoscaling_config"])
    for item in args.set:
        key, _, value = item.partition("=")
        scaling[key] = parse_value(value)
    min_replicas = int(scaling.get("min_replicas", 1))
    body = sample_image("JPEG")  # a small body: decoding in the ingress is not the bottleneck
    runs = {}
    with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
        tmp = Path(tmp)
        server = MlflowServer(root=tmp / "mlflow").start()
        try:
            version = register_model(server.uri, tmp, args.model, args.img_size)
            ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False,
                     object_store_memory=500_000_000)
            port = free_port()
            serve.start(http_options={"host": "127.0.0.1", "port": port},
                        logging_config={"enable_access_log": False, "log_level": "WARNING"})
            url = f"http://127.0.0.1:{port}/v1/classify"
            try:
                plan = [("autoscaled", None, scaling)]
                if not args.skip_baseline:
                    plan.insert(0, ("baseline", min_replicas, None))
                for name, replicas, autoscaling in plan:
                    deployed = time.time()
                    deploy(config, server.uri, tmp / "cache", replicas=replicas,
                           autoscaling=autoscaling)
                    wait_until(lambda: app_running_since(deployed)
                               and running_replicas(APP, MODEL) == min_replicas, 300)
                    with Callers(url, body, JPEG, max_callers=1) as warm:
                        warm.set(1)
                        time.sleep(3)  # warm-up: first requests load the geometry
                    wait_until(lambda: replica_states(APP, MODEL) == {"RUNNING": min_replicas},
                               120)
                    settle = (None if autoscaling is None
                              else float(scaling.get("downscale_delay_s", 600)) + args.settle_s)
                    runs[name] = ramp(url, body, args, min_replicas=min_replicas, settle_s=settle)
                    print(name, json.dumps({k: v for k, v in runs[name].items()
                                            if not k.endswith("over_time")}), flush=True)
            finally:
                serve.shutdown()
                ray.shutdown()
        finally:
            server.stop()

    summary = {
        "failed_requests": sum(r["total"]["failed"] for r in runs.values()),
        "autoscaled": {k: runs["autoscaled"][k] for k in (
            "max_replicas_seen", "first_replica_started_after_s", "first_replica_added_after_s",
            "back_to_min_after_s")},
    }
    if "baseline" in runs:
        high, base = runs["autoscaled"]["phases"]["high"], runs["baseline"]["phases"]["high"]
        summary["high_phase_autoscaled_over_baseline"] = {
            "throughput": round(high["throughput_rps"] / max(base["throughput_rps"], 1e-9), 2),
            "p50_latency": round(high["p50_ms"] / max(base["p50_ms"], 1e-9), 2),
            "p99_latency": round(high["p99_ms"] / max(base["p99_ms"], 1e-9), 2),
        }
    result = {
        "benchmark": "autoscale",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "ray_logical_cpus": args.ray_cpus,
                    "load_average_1m_at_start": load_at_start,
                    "load_average_1m_at_end": os.getloadavg()[0], "gpu": None,
                    "note": "callers, proxy, ingress and model replicas share the cores"},
        "model": {"name": args.model, "input": f"{args.img_size}x{args.img_size}",
                  "registered": f"{NAME}/{version}",
                  "image": f"JPEG 320x240 q90 ({len(body) // 1024} KB)"},
        "settings": {
            "ramp": f"{args.low_callers} → {args.high_callers} → {args.low_callers} callers",
            "low_s": args.low_s, "high_s": args.high_s,
            "autoscaling_config": scaling,
            "model_num_cpus": model_entry(config)["ray_actor_options"]["num_cpus"],
            "baseline": f"model pinned at {min_replicas} replica(s)",
        },
        "summary": summary,
        "runs": runs,
        "wall_s": round(time.perf_counter() - started, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    plot(result, out.with_suffix(".png"))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
