"""Production readiness: CNN vs ViT vs transformer detectors on this machine.

Runs ``vitpipe report`` (``components.report.build_report``): the inference cost of the
real-size models at their input sizes (ResNet-50, ViT-B/16, DeiT-S, TNT-S, R50+ViT-B/16,
DETR-R50 at 800, YOLOS-S at 512x864, RT-DETRv2-S/L, D-FINE-S, LW-DETR-small/tiny at 640;
fp32, and bf16 where the CPU runs it natively), then the training comparison of small
variants on the synthetic shapes; adds the machine's measured GEMM peak and writes one JSON
file that ``benchmarks/table.py`` renders into docs/benchmarks.md and docs/report.md.

    python benchmarks/bench_readiness.py               # ~5-6 min cost + ~7 min training, 2 cores
    python benchmarks/bench_readiness.py --no-train    # cost only (<= 10 min on 2 cores)
    python benchmarks/bench_readiness.py --quick --out /tmp/readiness.json   # tiny models, ~1 min
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from components.core.device import cpu_has_fast_bf16  # noqa: E402
from components.report.build import build_report  # noqa: E402
from components.report.config import ReportConfig  # noqa: E402
from _machine import gemm_peak  # noqa: E402  (benchmarks/, the script's own folder)

OUT = Path(__file__).parent / "results" / "readiness.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny models, one short epoch (tests)")
    ap.add_argument("--no-train", action="store_true", help="inference cost only")
    ap.add_argument("--no-cost", action="store_true", help="training comparison only")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    ap.add_argument("--gemm-seconds", type=float, default=3.0, help="seconds per GEMM-peak measurement")
    ap.add_argument("--workdir", default=None, help="keep the report's files here (default: a temp dir)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    started = time.perf_counter()
    load_at_start = [round(v, 2) for v in os.getloadavg()]
    if args.threads:
        torch.set_num_threads(args.threads)
    seconds = 0.2 if args.quick else args.gemm_seconds
    peaks = {"fp32": gemm_peak(torch.float32, seconds, n=512 if args.quick else 2048)}
    if cpu_has_fast_bf16():
        peaks["bf16"] = gemm_peak(torch.bfloat16, seconds, n=512 if args.quick else 2048)
    peak_tflops = {k: round(v / 1e12, 4) for k, v in peaks.items()}
    print(json.dumps({"gemm_peak_tflops": peak_tflops}), flush=True)

    settings = {"train": not args.no_train, "cost": not args.no_cost}
    if args.threads:
        settings["threads"] = args.threads
    cfg = ReportConfig.quick(**settings) if args.quick else ReportConfig(**settings)
    with tempfile.TemporaryDirectory() as tmp:
        files = build_report(cfg, args.workdir or tmp, mode="quick" if args.quick else "full")
        results = json.loads(files.results.read_text())
    results["benchmark"] = "readiness"
    results["machine"]["loadavg_at_start"] = load_at_start  # before the GEMM peak, too
    results["machine"]["gemm_peak_tflops"] = peak_tflops
    results["gemm_peak_tflops"] = peak_tflops  # where table.py's overload check reads it
    results["wall_s"] = round(time.perf_counter() - started, 1)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out} in {results['wall_s']} s (load {load_at_start} -> {results['machine']['loadavg_at_end']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
