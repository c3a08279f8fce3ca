"""``vitpipe report``: the production-readiness report (Markdown + HTML + plots, MLflow)."""

from __future__ import annotations

import argparse
import os


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "report", help="CNN vs ViT vs transformer detectors: cost and a training comparison (Markdown + HTML)",
        description="Measure parameters, GMACs, CPU latency/throughput and peak memory (fp32, and "
                    "bf16 where native) of the real-size models at their input sizes, train small "
                    "variants for a stated budget on the synthetic dataset, and write report.md / "
                    "report.html with plots and findings computed from the numbers.",
    )
    p.add_argument("--out", default=".demo/report", help="output directory (default .demo/report)")
    p.add_argument("--quick", action="store_true",
                   help="test-sized: tiny models only, one short epoch each (under a minute)")
    p.add_argument("--data-root", default=None,
                   help="synthetic dataset to train on (default: synthesize one under --out)")
    p.add_argument("--tracking-uri", default=os.environ.get("MLFLOW_TRACKING_URI"),
                   help="log the report to this MLflow server (default $MLFLOW_TRACKING_URI)")
    p.add_argument("--no-train", action="store_true", help="cost measurements only")
    p.add_argument("--no-cost", action="store_true", help="training to target only")
    p.add_argument("--families", "--models", dest="families", default=None,
                   help="comma-separated subset: cost models by registered name (vit_base_patch16_224, "
                        "rtdetr_v2_r18, ...) and trained variants by key (vit_demo, vit_demo_stemconv, and "
                        "the opt-in detectors detr_demo, yolos_demo, yolos_demo_nms_iou0.5_stemconv_k3)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a ReportConfig field, e.g. --set max_epochs=10 (repeatable)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from components.cli.main import UserError
    from components.report.config import ReportConfig

    settings: dict = {}
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set expects KEY=VALUE, got {item!r}")
        settings[key.strip()] = value
    if args.data_root:
        if not os.path.isdir(args.data_root):
            raise UserError(f"--data-root {args.data_root} is not a directory")
        settings["data_root"] = args.data_root
    if args.no_train:
        settings["train"] = False
    if args.no_cost:
        settings["cost"] = False
    if args.no_train and args.no_cost:
        raise UserError("--no-train and --no-cost leave nothing to report")
    try:
        cfg = ReportConfig.quick(**settings) if args.quick else ReportConfig(**settings)
    except ValidationError as err:
        first = err.errors()[0]
        raise UserError(f"report setting {'.'.join(map(str, first['loc']))}: {first['msg']}") from None
    if args.families:
        from components.report.config import detection_families

        wanted = {w.strip() for w in args.families.split(",") if w.strip()}
        pool = list(cfg.families) + [f for f in detection_families() if f.key not in {g.key for g in cfg.families}]
        cost = [m for m in cfg.cost_models if m.name in wanted]
        trained = [f for f in pool if f.key in wanted]
        known = {m.name for m in cfg.cost_models} | {f.key for f in pool}
        unknown = wanted - known
        if unknown or not (cost or trained):
            raise UserError(f"unknown --families {sorted(unknown)}; known: {', '.join(sorted(known))}")
        cfg = cfg.model_copy(update={"cost_models": cost, "families": trained})

    from components.report.build import build_report

    files = build_report(cfg, args.out, tracking_uri=args.tracking_uri,
                         mode="quick" if args.quick else "full")
    print(f"report: {files.markdown}")
    print(f"report: {files.html}")
    if files.mlflow_run_id:
        print(f"report: logged to MLflow run {files.mlflow_run_id} ({args.tracking_uri})")
    return 0
