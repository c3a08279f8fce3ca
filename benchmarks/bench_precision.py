"""Is bf16 autocast faster than fp32 on this CPU? The rule ``precision: auto`` uses, checked.

    python benchmarks/bench_precision.py [--threads N] [--out benchmarks/results/precision.json]

``precision: auto`` measures each model once on the CPU it runs on
(``components.core.device.measure_bf16_speedup``: forward + backward of a 2-image batch,
fp32 vs bf16 autocast) and picks bf16 when it is at least 1.1x faster. This script shows that
rule's measurement beside what it predicts, a full training step (batch 16, AdamW) timed in
both precisions in the same process, for narrow and wide models.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import torch  # noqa: E402

from _machine import cpu_name  # noqa: E402
from components.core.device import BF16_MIN_SPEEDUP, cpu_has_fast_bf16, measure_bf16_speedup  # noqa: E402
from components.data.patchify import patchify  # noqa: E402
from components.models import build_model  # noqa: E402

# (model, input px): the demo's narrow ViT and YOLOS at their demo sizes, ViT-Ti/S at 224
MODELS = (("vit_demo", 64), ("yolos_demo", 96), ("vit_tiny_patch16_224", 224), ("vit_small_patch16_224", 224))


def step_seconds(name: str, dtype: torch.dtype | None, *, batch: int, img: int, steps: int) -> float:
    """Median seconds of one optimizer step of ``name`` with autocast ``dtype`` (None: fp32)."""
    torch.manual_seed(0)
    model = build_model(name, num_classes=10, img_size=img).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels = torch.randint(0, 256, (batch, img, img, 3), dtype=torch.uint8)
    (patches, grid), labels = patchify(pixels, model.patch_size), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 2):
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            logits = model(patches, grid)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "precision.json"))
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    rows = []
    for name, img in MODELS:
        model = build_model(name, num_classes=5, img_size=img)
        rule = measure_bf16_speedup(model, train=True)
        row = {"model": name, "img_size": img, "rule_bf16_speedup": round(rule, 3),
               "rule_picks": "bf16" if rule >= BF16_MIN_SPEEDUP else "fp32"}
        if model.task == "classification":  # the full step, for the classifiers
            fp32, bf16 = [], []
            for _ in range(2):  # alternate, so drift hits both
                fp32.append(step_seconds(name, None, batch=args.batch, img=img, steps=args.steps))
                bf16.append(step_seconds(name, torch.bfloat16, batch=args.batch, img=img, steps=args.steps))
            row.update({"batch": args.batch, "step_fp32_ms": round(1000 * min(fp32), 1),
                        "step_bf16_ms": round(1000 * min(bf16), 1),
                        "step_bf16_speedup": round(min(fp32) / min(bf16), 3),
                        "faster": "bf16" if min(bf16) < min(fp32) else "fp32"})
        rows.append(row)
        print(row, flush=True)
    result = {
        "benchmark": "precision",
        "what": "bf16 autocast vs fp32 on this CPU: the precision rule's measurement and full training steps",
        "machine": {"cpu": cpu_name(), "cpus": os.cpu_count(), "threads": args.threads,
                    "native_bf16": cpu_has_fast_bf16(), "torch": torch.__version__,
                    "load_average_1m_at_start": round(load_start, 2),
                    "load_average_1m_at_end": round(os.getloadavg()[0], 2)},
        "rule": f"precision auto picks bf16 when the model's measured speedup is >= {BF16_MIN_SPEEDUP}",
        "results": rows,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
