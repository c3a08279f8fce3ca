"""Serving latency and throughput: batched vs unbatched, and the overhead over in-process.

One run, loopback only, bounded (< 8 min here):

1. a real ``mlflow server`` with a random-weight ``vit_demo`` classifier registered as
   ``@champion``; a local Ray cluster; Serve on a free 127.0.0.1 port;
2. in-process baseline: the same PNG through the same code the replicas run
   (``decode_image_bytes`` + ``preprocess`` + ``LoadedModel.run`` on one item), p50/p99;
3. the application in both layouts — *split* (ingress + classifier deployment, 1 replica
   each) and *colocated* (one ``server`` replica running the model itself) — on Serve's
   gRPC data plane (what vitpipe ships), and the split layout once more on Ray actor calls
   (Serve's default; a second Ray cluster in the same run); each deployed twice: *batched*
   (``max_batch_size`` 32) and *unbatched* (``max_batch_size`` 1), the same code path
   otherwise; for each, closed-loop clients (aiohttp) at concurrency 1, 8, 32 post the PNG
   to ``/v1/classify`` for a fixed number of requests (time-capped) after a warm-up, and
   sequential ``GET /v2/health/live`` give Serve's own floor; in the split layout 32
   concurrent callers then hit the model deployment alone through a DeploymentHandle (no
   HTTP, no decode: where batching itself acts);
4. p50/p99 latency, throughput, errors per (layout, mode, concurrency) →
   ``benchmarks/results/serve.json``.

Goals checked (reported, not asserted; the better layout counts): batched ≥ 2x unbatched
throughput at c=32; p50 overhead over the in-process call ≤ 10 ms at c=1; zero errors.

Note: the load generator, the HTTP proxy, the ingress and the model replica share this
machine's cores, so absolute numbers are a floor of what separate nodes would show.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from _machine import cpu_name  # noqa: E402  (benchmarks/, the script's own folder)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.pop("RAY_ADDRESS", None)

NAME = "bench-serve-classifier"
# Serve's transport between proxy and replicas (and between deployments) → the layouts run on
# it: split = ingress → model deployment; colocated = the models inside the ingress replica.
# "grpc" is what vitpipe ships (components.serving.settings.SERVE_NODE_ENV); "actor_calls" is
# Ray Serve's default, the baseline.
TRANSPORTS = {"grpc": ("split", "colocated"), "actor_calls": ("split",)}
os.environ["RAY_SERVE_USE_GRPC_BY_DEFAULT"] = "1"  # the driver's handle calls (read at import)
CLASS_NAMES = ["circle", "square", "triangle"]


def percentiles(values_s: list[float]) -> dict[str, float]:
    ms = np.asarray(values_s) * 1e3
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "mean_ms": round(float(ms.mean()), 2)}


def sample_image(fmt: str = "PNG", size_hw=(240, 320)) -> bytes:
    """A 320x240 photo-like image (a red box on noise): PNG ~147 KB, JPEG (q 90) ~25 KB."""
    import io

    from PIL import Image

    rng = np.random.default_rng(0)
    image = np.full((*size_hw, 3), 40, np.uint8)
    image[60:180, 100:260] = (200, 60, 50)
    image = np.clip(image + rng.integers(0, 20, image.shape), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def register_model(tracking_uri: str, workdir: Path, model_name: str,
                   img_size: int | None = None) -> str:
    import torch
    from mlflow import MlflowClient

    from components.core.checkpoint import CheckpointMeta, save_checkpoint
    from components.models import build_model
    from components.tracking.registry import register_checkpoint

    torch.manual_seed(0)
    model = build_model(model_name, num_classes=len(CLASS_NAMES),
                        **({"img_size": img_size} if img_size else {}))
    meta = CheckpointMeta(model_name=model_name, task="classification",
                          model_config=dict(model.build_config), class_names=CLASS_NAMES,
                          image_size=int(model.img_size), patch_size=int(model.patch_size),
                          mean=model.mean, std=model.std)
    ckpt = save_checkpoint(workdir / "ckpt", model.state_dict(), meta)
    version = register_checkpoint(ckpt, task="classification", registered_name=NAME,
                                  tracking_uri=tracking_uri)
    MlflowClient(tracking_uri, registry_uri=tracking_uri).set_registered_model_alias(
        NAME, "champion", version)
    return version


def in_process(uri: str, tracking_uri: str, cache: Path, bodies: dict[str, bytes], n: int) -> dict:
    """The replica's own work on one request, called directly (1 torch thread, as a replica),
    for each request body in ``bodies`` (``end_to_end[name]``), with the model loaded once."""
    import torch

    from components.data.image_io import preprocess
    from components.serving.decode import decode_image_bytes
    from components.serving.runtime import InferItem, load_version

    torch.set_num_threads(1)
    loaded = load_version(uri, task="classification", cache_dir=cache, tracking_uri=tracking_uri)
    size, patch = loaded.meta.image_size, loaded.meta.patch_size

    def once(body: bytes):
        image = decode_image_bytes(body, max_pixels=40_000_000)
        patches, _ = preprocess(image, image_size=size, patch_size=patch)
        return loaded.run([InferItem(patches, size, patch, image.shape[:2])],
                          top_k=5, score_threshold=0.0, max_detections=100)

    end_to_end = {}
    for name, body in bodies.items():
        for _ in range(20):
            once(body)
        times = []
        for _ in range(n):
            start = time.perf_counter()
            once(body)
            times.append(time.perf_counter() - start)
        end_to_end[name] = percentiles(times)
    model_times = []
    patches = np.zeros((1, *preprocess(np.zeros((8, 8, 3), np.uint8), image_size=size,
                                       patch_size=patch)[0].shape), np.uint8)
    for _ in range(n):
        start = time.perf_counter()
        loaded.forward(patches)
        model_times.append(time.perf_counter() - start)
    return {"geometry": (size, patch),
            "end_to_end": end_to_end, "model_forward_batch1": percentiles(model_times),
            "precision": loaded.describe()["precision"], "torch_threads": torch.get_num_threads()}


async def load(url: str, png: bytes, concurrency: int, requests: int, cap_s: float,
               token: str | None, content_type: str = "image/png") -> dict:
    import aiohttp

    headers = {"content-type": content_type}
    if token:
        headers["authorization"] = f"Bearer {token}"
    latencies, errors, statuses = [], 0, {}
    sent = 0
    deadline = time.perf_counter() + cap_s
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker():
            nonlocal sent, errors
            while sent < requests and time.perf_counter() < deadline:
                sent += 1
                start = time.perf_counter()
                try:
                    async with session.post(url, data=png, headers=headers) as resp:
                        await resp.read()
                        statuses[resp.status] = statuses.get(resp.status, 0) + 1
                        if resp.status != 200:
                            errors += 1
                            continue
                except aiohttp.ClientError:
                    errors += 1
                    continue
                latencies.append(time.perf_counter() - start)

        wall = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(concurrency)])
        wall = time.perf_counter() - wall
    return {"concurrency": concurrency, "requests": sent, "ok": len(latencies),
            "errors": errors, "statuses": statuses, "wall_s": round(wall, 2),
            "throughput_rps": round(len(latencies) / wall, 1), **percentiles(latencies or [0.0])}


async def get_latency(url: str, requests: int) -> dict:
    """p50/p99 of sequential GETs: what one HTTP round trip through Serve costs, no work."""
    import aiohttp

    latencies = []
    async with aiohttp.ClientSession() as session:
        for _ in range(requests):
            start = time.perf_counter()
            async with session.get(url) as resp:
                await resp.read()
            latencies.append(time.perf_counter() - start)
    return percentiles(latencies)


async def load_handle(patches: np.ndarray, size: int, patch: int, concurrency: int,
                      requests: int, cap_s: float) -> dict:
    """The model deployment alone, through a DeploymentHandle (no HTTP, no decoding)."""
    from ray import serve

    handle = serve.get_deployment_handle("classifier", app_name="bench")
    before = await handle.describe.remote()
    latencies, sent, errors = [], 0, 0
    deadline = time.perf_counter() + cap_s

    async def worker():
        nonlocal sent, errors
        while sent < requests and time.perf_counter() < deadline:
            sent += 1
            start = time.perf_counter()
            try:
                await handle.infer.remote(patches, size, patch, (size, size))
            except Exception:  # counted, the run goes on
                errors += 1
                continue
            latencies.append(time.perf_counter() - start)

    wall = time.perf_counter()
    await asyncio.gather(*[worker() for _ in range(concurrency)])
    wall = time.perf_counter() - wall
    after = await handle.describe.remote()
    batches = after["batches"]["count"] - before["batches"]["count"]
    batched = after["batches"]["requests"] - before["batches"]["requests"]
    return {"concurrency": concurrency, "requests": sent, "ok": len(latencies), "errors": errors,
            "wall_s": round(wall, 2), "throughput_rps": round(len(latencies) / wall, 1),
            "mean_batch_size": round(batched / max(batches, 1), 2),
            **percentiles(latencies or [0.0])}


def deploy(tracking_uri: str, cache: Path, max_batch_size: int, wait_s: float, port: int,
           access_log: bool, colocate: bool = False):
    from ray import serve

    from components.serving.app import build_app

    app = build_app({
        "classifier_uri": f"models:/{NAME}@champion", "detector_uri": None,
        "tracking_uri": tracking_uri, "replicas": 1,
        "model_settings": {"max_batch_size": max_batch_size, "batch_wait_timeout_s": wait_s,
                           "cache_dir": str(cache), "poll_interval_s": 60},
        "ingress_settings": {}, "model_num_cpus": 1, "ingress_num_cpus": 1,
        "colocate": colocate,
    })
    serve.run(app, name="bench", route_prefix="/",
              logging_config={"enable_access_log": access_log, "log_level": "WARNING"})


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=400, help="per (mode, concurrency)")
    parser.add_argument("--cap-s", type=float, default=15.0, help="time cap per load run")
    parser.add_argument("--wait-ms", type=float, default=2.0, help="batched: batch_wait_timeout")
    parser.add_argument("--access-log", action="store_true",
                        help="keep Serve's per-request access log on (off: high-QPS setting)")
    parser.add_argument("--img-size", type=int, default=None,
                        help="the model's input size (default: the model's own)")
    parser.add_argument("--model", default="vit_demo",
                        help="registered model to serve (random weights), e.g. vit_tiny_patch16_224")
    parser.add_argument("--out", default=None, help="default: results/serve.json (vit_demo) "
                        "or results/serve_<model>.json")
    args = parser.parse_args()
    if args.out is None:
        suffix = "" if args.model == "vit_demo" else f"_{args.model}"
        suffix += f"_{args.img_size}px" if args.img_size else ""
        args.out = str(ROOT / "benchmarks" / "results" / f"serve{suffix}.json")

    import ray
    from ray import serve

    from components.tracking.server import MlflowServer, free_port

    started = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    png, jpeg = sample_image("PNG"), sample_image("JPEG")
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        tmp = Path(tmp)
        server = MlflowServer(root=tmp / "mlflow").start()
        try:
            version = register_model(server.uri, tmp, args.model, args.img_size)
            uri = f"models:/{NAME}@champion"
            runs: dict[str, dict[str, list]] = {}
            handle_runs, floors, jpeg_c1, baseline = {}, {}, {}, None
            for transport, configs in TRANSPORTS.items():
                os.environ["RAY_SERVE_USE_GRPC_BY_DEFAULT"] = "1" if transport == "grpc" else "0"
                ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
                         object_store_memory=500_000_000)
                port = free_port()
                serve.start(http_options={"host": "127.0.0.1", "port": port})
                try:
                    if baseline is None:  # with Ray and Serve's system actors running
                        baseline = in_process(uri, server.uri, tmp / "cache",
                                              {"png": png, "jpeg": jpeg}, n=200)
                        baseline_jpeg = {"end_to_end": baseline["end_to_end"].pop("jpeg")}
                        baseline["end_to_end"] = baseline["end_to_end"].pop("png")
                        size, patch = baseline.pop("geometry")
                        patches = np.zeros(((size // patch) ** 2, patch * patch * 3), np.uint8)
                    url = f"http://127.0.0.1:{port}/v1/classify"
                    for layout in configs:
                        key = layout if transport == "grpc" else f"{layout}_actor_calls"
                        runs[key] = {}
                        for mode, batch, wait in (("batched", 32, args.wait_ms / 1e3),
                                                  ("unbatched", 1, 0.0)):
                            deploy(server.uri, tmp / "cache", batch, wait, port, args.access_log,
                                   colocate=layout == "colocated")
                            asyncio.run(load(url, png, 8, 100, 30, None))  # warm-up
                            runs[key][mode] = [
                                asyncio.run(load(url, png, c, args.requests, args.cap_s, None))
                                for c in (1, 8, 32)]
                            if mode == "batched":
                                # a smaller body (the same image as JPEG), and Serve's own
                                # floor (proxy → replica → proxy, no work)
                                jpeg_c1[key] = asyncio.run(load(
                                    url, jpeg, 1, args.requests, args.cap_s, None, "image/jpeg"))
                                floors[key] = asyncio.run(get_latency(
                                    f"http://127.0.0.1:{port}/v2/health/live", args.requests // 2))
                            if key == "split":  # the model deployment alone: batching itself
                                handle_runs[mode] = asyncio.run(load_handle(
                                    patches, size, patch, 32, args.requests, args.cap_s))
                            print(key, mode, json.dumps(runs[key][mode]), flush=True)
                finally:
                    serve.shutdown()
                    ray.shutdown()
        finally:
            server.stop()

    e2e_p50 = baseline["end_to_end"]["p50_ms"]
    summary = {}
    for layout, modes in runs.items():
        by = {mode: {r["concurrency"]: r for r in rs} for mode, rs in modes.items()}
        summary[layout] = {
            "batched_over_unbatched_throughput_c32": round(
                by["batched"][32]["throughput_rps"]
                / max(by["unbatched"][32]["throughput_rps"], 1e-9), 2),
            "p50_overhead_ms_c1_batched": round(by["batched"][1]["p50_ms"] - e2e_p50, 2),
            "p50_overhead_ms_c1_unbatched": round(by["unbatched"][1]["p50_ms"] - e2e_p50, 2),
            "p50_overhead_ms_c1_batched_jpeg": round(
                jpeg_c1[layout]["p50_ms"] - baseline_jpeg["end_to_end"]["p50_ms"], 2),
        }
    handle_speedup = handle_runs["batched"]["throughput_rps"] / max(
        handle_runs["unbatched"]["throughput_rps"], 1e-9)
    errors = sum(r["errors"] for modes in runs.values() for rs in modes.values() for r in rs)
    errors += sum(r["errors"] for r in jpeg_c1.values())
    best_speedup = max(s["batched_over_unbatched_throughput_c32"] for s in summary.values())
    best_overhead = min(s["p50_overhead_ms_c1_batched"] for s in summary.values())
    best_overhead_jpeg = min(s["p50_overhead_ms_c1_batched_jpeg"] for s in summary.values())
    result = {
        "benchmark": "serve",
        "machine": {"cpu": cpu_name(), "cores": os.cpu_count(), "python": platform.python_version(),
                    "load_average_1m_at_start": load_at_start, "load_average_1m_at_end": os.getloadavg()[0],
                    "gpu": None, "note": "client, proxy, ingress and model replica share the cores"},
        "model": {"name": args.model, "input": f"{size}x{size}", "registered": f"{NAME}/{version}",
                  "image": f"PNG 320x240 ({len(png) // 1024} KB); JPEG q90 ({len(jpeg) // 1024} KB)"},
        "in_process": baseline,
        "in_process_jpeg": baseline_jpeg,
        "serve_jpeg_c1_batched": jpeg_c1,
        "serve": runs,
        "model_deployment_via_handle_c32": handle_runs,
        "serve_floor_get_c1": floors,
        "settings": {"access_log": args.access_log,
                     "batched": {"max_batch_size": 32, "batch_wait_timeout_s": args.wait_ms / 1e3},
                     "unbatched": {"max_batch_size": 1},
                     "replicas": {"split": {"ingress": 1, "classifier": 1},
                                  "colocated": {"server": 1}},
                     "transport": {"split": "grpc", "colocated": "grpc",
                                   "split_actor_calls": "Ray actor calls (Serve's default)"}},
        "summary": {
            **summary,
            "batched_over_unbatched_model_deployment_c32": round(handle_speedup, 2),
            "errors": errors,
            "goals": {"throughput_2x_at_c32": best_speedup >= 2.0,
                      "overhead_le_10ms_at_c1": best_overhead <= 10.0,
                      "overhead_le_10ms_at_c1_jpeg_body": best_overhead_jpeg <= 10.0,
                      "zero_errors": errors == 0},
        },
        "wall_s": round(time.perf_counter() - started, 1),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result["summary"], indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
