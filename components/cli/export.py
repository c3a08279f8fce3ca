"""``vitpipe export MODEL_URI --format onnx|torch-export``: an exported artifact with measured parity.

Prints one summary (or ``--json``: the parity report) on stdout. Exit code 2 with one line
on stderr for bad input (unknown URI, not a checkpoint, a split of another task or other
classes) and when parity fails (the files stay in ``--out`` for inspection; nothing is
published). Reference: docs/export.md.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    ex = subparsers.add_parser(
        "export", help="export a model to ONNX or torch.export and measure parity",
        description="Export a registry version (models:/NAME@ALIAS, models:/NAME/VERSION) or a "
        "checkpoint directory; compare it with the PyTorch model on a val split (or synthetic "
        "images); log the file and parity.json to the version's MLflow run when parity holds.")
    ex.add_argument("model_uri", metavar="MODEL_URI")
    ex.add_argument("--format", required=True, choices=("onnx", "torch-export"))
    ex.add_argument("--out", default=None, help="output folder (default: ./export-<name>-v<version>)")
    ex.add_argument("--opset", type=int, default=None, help="ONNX opset, 17..23 (default 20)")
    ex.add_argument("--split", default=None,
                    help="val images: an ImageFolder split folder, COCO images with "
                         "--annotations, or a VOC folder (default: synthetic images)")
    ex.add_argument("--split-format", default=None, choices=("coco", "imagefolder", "voc"),
                    help="default: coco with --annotations, else imagefolder")
    ex.add_argument("--annotations", default=None, help="COCO instances JSON of --split")
    ex.add_argument("--image-set", default=None,
                    help="VOC: the split's id list, e.g. ImageSets/Main/val.txt (default: all XML)")
    ex.add_argument("--max-images", type=int, default=None, help="images of the split used (256)")
    ex.add_argument("--synthetic-images", type=int, default=None,
                    help="synthetic images when no --split (32)")
    ex.add_argument("--batch-size", type=int, default=None, help="eval batch size (32)")
    ex.add_argument("--atol", type=float, default=None,
                    help="max abs difference allowed on every output (1e-3)")
    ex.add_argument("--metric-tol", type=float, default=None,
                    help="allowed top-1 / mAP50 difference (1e-3)")
    ex.add_argument("--latency-runs", type=int, default=None, help="timed batch-1 calls (20)")
    ex.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ex.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    ex.add_argument("--cache-dir", default=None, help="model cache (~/.cache/vitpipe/models)")
    ex.add_argument("--no-publish", action="store_true",
                    help="do not log the files to the version's MLflow run")
    ex.add_argument("--json", action="store_true", help="print the parity report as JSON")
    ex.set_defaults(handler=_export)


def _config(args: argparse.Namespace):
    from pydantic import ValidationError

    from components.cli.main import UserError
    from components.export.run import ExportConfig

    given = {
        "format": args.format, "out": args.out, "opset": args.opset, "split": args.split,
        "annotations": args.annotations, "split_format": args.split_format,
        "image_set": args.image_set, "max_images": args.max_images,
        "synthetic_images": args.synthetic_images, "batch_size": args.batch_size,
        "atol": args.atol, "metric_tol": args.metric_tol, "latency_runs": args.latency_runs,
        "threads": args.threads, "tracking_uri": args.tracking_uri, "cache_dir": args.cache_dir,
        "publish": not args.no_publish,
    }
    try:
        return ExportConfig.model_validate({k: v for k, v in given.items() if v is not None})
    except ValidationError as err:
        first = err.errors()[0]
        message = first["msg"].removeprefix("Value error, ")
        if first["loc"]:
            message = "--" + "-".join(str(p) for p in first["loc"]).replace("_", "-") + f": {message}"
        raise UserError(message) from None


def _export(args: argparse.Namespace) -> int:
    from components.cli.main import UserError
    from components.export.graph import ExportError
    from components.export.run import export_model
    from components.tracking.registry import RegistryError

    cfg = _config(args)
    try:
        # exporters and MLflow print progress on stdout; stdout is for the answer
        with contextlib.redirect_stdout(sys.stderr):
            report = export_model(args.model_uri, cfg)
    except (RegistryError, ExportError) as err:
        raise UserError(str(err)) from None
    print(json.dumps(report, indent=2) if args.json else summary(report))
    if not report["passed"]:
        raise UserError(f"parity failed: {'; '.join(report['failures'])} "
                        f"(report: {report['out']}/parity.json)")
    return 0


def summary(report: dict) -> str:
    """The parity report as a few readable lines."""
    src, metric, lat = report["source"], report["metric"], report["latency"]
    diffs = ", ".join(f"{k} {v:.2e}" for k, v in report["max_abs_diff"].items())
    big = next(k for k in lat["pytorch_eager"] if k.endswith("_img_per_s"))
    lines = [
        f"exported {src['uri']} ({src['model_name']}, {src['task']}) -> "
        f"{report['out']}/{report['file']['name']} [{report['format']}, exporter "
        f"{report['exporter']}{', opset ' + str(report['opset']) if report['opset'] else ''}]",
        f"data: {report['data']['split']}: {report['data']['images']} images, "
        f"{report['data']['skipped']} skipped; reference: {report['data']['reference']}",
        f"max abs diff: {diffs} (atol {report['atol']:g})",
        f"{metric['name']}: pytorch {metric['pytorch']:.4f}, {report['runtime']} "
        f"{metric['exported']:.4f} (|diff| {metric['abs_diff']:.4f}, tolerance {metric['tolerance']:g})",
        f"{'':<16}{'batch 1 p50 ms':>16}{'batch 32 img/s':>16}   ({lat['threads']} threads)",
    ]
    for name, label in (("pytorch_eager", "pytorch eager"), ("exported", report["runtime"])):
        lines.append(f"{label:<16}{lat[name]['b1_p50_ms']:>16.2f}{lat[name][big]:>16.1f}")
    lines.append(f"parity: {'PASSED' if report['passed'] else 'FAILED'}"
                 + (f"; logged to run {src['run_id']} as {report['published']}"
                    if report["published"] else ""))
    return "\n".join(lines)
