"""PyTorch eager vs onnxruntime: batch-1 latency and batch-32 throughput of exported models.

For each model (random weights, built at its registered input size; nothing downloaded):
export to ONNX exactly as ``vitpipe export`` does (``components.export.graph``: uint8
patches in, normalisation inside the graph, dynamic batch), open it with onnxruntime's CPU
provider (``components.export.runners.OnnxModule``) and time both with
``components.export.parity.measure_latency``: the two runtimes take turns call by call, so
machine load hits them alike, on the same number of threads. The max abs difference of the
outputs on the timing batch is recorded as a sanity check.

Run (quiet machine; several minutes, most of them DETR-R50 at 800x800, batch 32)::

    python benchmarks/bench_export.py                       # → benchmarks/results/export.json
    python benchmarks/bench_export.py --models vit_demo yolos_demo --runs 5 --out /tmp/export.json

Reported per model: ``b1_p50_ms`` (median of ``--runs`` batch-1 calls), ``b32_img_per_s``
(``--big-batch`` images per call, ``max(2, runs // 5)`` calls) for ``pytorch_eager`` and
``onnxruntime``, and the ratios onnxruntime / PyTorch (> 1: onnxruntime faster).
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DEFAULT_MODELS = ("vit_tiny_patch16_224", "detr_resnet50")  # registered sizes: 224, 800


def bench_model(name: str, *, runs: int, big_batch: int, workdir: Path) -> dict:
    import numpy as np
    import torch

    from components.core.checkpoint import CheckpointMeta
    from components.export.graph import example_patches, export_onnx
    from components.export.parity import measure_latency
    from components.export.runners import OnnxModule
    from components.models import build_model

    torch.manual_seed(0)
    model = build_model(name).eval()
    with torch.no_grad():  # zero-initialised heads would make every output equal (diff 0)
        for param in model.parameters():
            if not param.abs().sum():
                param.normal_(0.0, 0.02)
    side = model.img_size if isinstance(model.img_size, int) else None
    if side is None:  # checkpoints (and so exports) are square: CheckpointMeta.image_size
        raise SystemExit(f"{name}: non-square input {model.img_size}; pick a square model")
    num_classes = getattr(model, "num_classes", None) or 1000
    meta = CheckpointMeta(
        model_name=name, task=model.task, model_config=dict(model.build_config),
        class_names=[f"c{i}" for i in range(num_classes)], image_size=side,
        patch_size=model.patch_size, mean=model.mean, std=model.std)
    start = time.perf_counter()
    exporter = export_onnx(model, meta, workdir / f"{name}.onnx")
    export_s = time.perf_counter() - start
    onnx = OnnxModule(workdir / f"{name}.onnx", threads=torch.get_num_threads())
    check = example_patches(meta, 2, seed=5)
    with torch.inference_mode():
        ref, got = model(check, model.grid_size), onnx(check, model.grid_size)
    pairs = ([(ref, got)] if isinstance(ref, torch.Tensor)
             else [(ref[k], got[k]) for k in ("pred_logits", "pred_boxes")])
    diff = max(float(np.abs(a.float().numpy() - b.numpy()).max()) for a, b in pairs)
    timed = measure_latency({"pytorch_eager": model, "onnxruntime": onnx}, meta, runs=runs,
                            big_batch=big_batch)
    big = f"b{big_batch}_img_per_s"
    return {
        "model": name, "task": model.task, "img_size": side, "exporter": exporter,
        "export_s": round(export_s, 2), "max_abs_diff": diff, **timed,
        "onnxruntime_vs_pytorch_b1": round(timed["pytorch_eager"]["b1_p50_ms"]
                                           / timed["onnxruntime"]["b1_p50_ms"], 3),
        f"onnxruntime_vs_pytorch_b{big_batch}": round(timed["onnxruntime"][big]
                                                      / timed["pytorch_eager"][big], 3),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS))
    parser.add_argument("--runs", type=int, default=20, help="timed batch-1 calls per runtime")
    parser.add_argument("--big-batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=None, help="default: torch's (all cores)")
    parser.add_argument("--note", default="", help="free text about the machine's state")
    parser.add_argument("--out", default=str(ROOT / "benchmarks/results/export.json"))
    args = parser.parse_args(argv)

    import onnxruntime
    import torch

    from _machine import cpu_name

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-export-") as tmp:
        results = []
        for name in args.models:
            results.append(bench_model(name, runs=args.runs, big_batch=args.big_batch,
                                       workdir=Path(tmp)))
            print(json.dumps(results[-1]), flush=True)
    report = {
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__,
                    "onnxruntime": onnxruntime.__version__,
                    "load_avg_1m_at_end": os.getloadavg()[0], "note": args.note},
        "runs": args.runs, "big_batch": args.big_batch, "results": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
