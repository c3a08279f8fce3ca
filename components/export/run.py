"""``vitpipe export`` end to end: load, export, measure parity, write the report, publish.

:func:`export_model` loads the source (:mod:`~components.export.source`), writes the
export (:mod:`~components.export.graph`), opens it with its runtime
(:mod:`~components.export.runners`), measures it against the PyTorch model
(:mod:`~components.export.parity`) and writes ``parity.json`` beside it. When the source is
a registry version and parity holds, both files go to that version's MLflow run
(:mod:`~components.export.publish`). A failed parity check is reported, never published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field, model_validator

from components.core.config import StrictModel
from components.export.graph import DEFAULT_OPSET, MIN_OPSET
from components.export.publish import FILES, REPORT_FILE

log = logging.getLogger(__name__)


class ExportConfig(StrictModel):
    """Options of one export (the CLI's flags; defaults documented in docs/export.md)."""

    format: Literal["onnx", "torch-export"] = "onnx"
    out: str | None = None  # folder for the file and parity.json; default ./export-<label>
    opset: int = Field(DEFAULT_OPSET, ge=MIN_OPSET, le=23)  # ONNX only
    split: str | None = None  # val images: ImageFolder folder, COCO images, or a VOC folder
    split_format: Literal["coco", "imagefolder", "voc"] | None = None  # None: coco with
    # annotations, else imagefolder
    annotations: str | None = None  # COCO instances JSON of ``split``
    image_set: str | None = None  # VOC: the split's id list (ImageSets/Main/val.txt)
    max_images: int = Field(256, ge=1)  # parity uses the split's first N images
    synthetic_images: int = Field(32, ge=1)  # sample size when no split is given
    batch_size: int = Field(32, ge=1)
    atol: float = Field(1e-3, ge=0)  # max abs difference allowed on every output
    metric_tol: float = Field(1e-3, ge=0)  # allowed |top-1 or mAP50 difference|
    latency_runs: int = Field(20, ge=1)  # timed batch-1 calls per model (batch 32: 1/5 of it)
    threads: int | None = Field(None, ge=1)  # onnxruntime and torch threads; None: torch's
    tracking_uri: str | None = None
    cache_dir: str = "~/.cache/vitpipe/models"
    publish: bool = True  # log the files to the version's run (registry URIs only)

    @model_validator(mode="after")
    def _split_paths(self) -> "ExportConfig":
        if (self.annotations or self.image_set or self.split_format) and not self.split:
            raise ValueError("annotations, image_set and split_format need split")
        return self


def export_model(uri: str, cfg: ExportConfig) -> dict[str, Any]:
    """Export ``uri`` as ``cfg`` says; returns the parity report (also in ``parity.json``)."""
    from components.export import graph, parity, publish
    from components.export.runners import open_exported
    from components.export.source import open_source

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    source = open_source(uri, cache_dir=cfg.cache_dir, tracking_uri=cfg.tracking_uri)
    meta = source.meta
    # the data first: a split of the wrong task or classes fails before any export work
    data = parity.load_split(meta, images=cfg.split, annotations=cfg.annotations,
                             split_format=cfg.split_format, image_set=cfg.image_set,
                             synthetic_images=cfg.synthetic_images, max_images=cfg.max_images,
                             batch_size=cfg.batch_size)
    out = Path(cfg.out or f"export-{source.label}").expanduser()
    path = out / FILES[cfg.format]
    start = time.perf_counter()
    if cfg.format == "onnx":
        exporter = graph.export_onnx(source.model, meta, path, opset=cfg.opset)
    else:
        exporter = graph.export_program(source.model, meta, path)
    export_s = time.perf_counter() - start
    exported = open_exported(path, cfg.format, threads=torch.get_num_threads())
    compared = parity.compare_outputs(source.model, exported, data, meta)
    latency = parity.measure_latency({"pytorch_eager": source.model, "exported": exported},
                                     meta, runs=cfg.latency_runs)
    failures = parity.judge(compared, atol=cfg.atol, metric_tol=cfg.metric_tol)
    report = {
        "passed": not failures, "failures": failures,
        "format": cfg.format, "exporter": exporter,
        "opset": cfg.opset if cfg.format == "onnx" else None,
        "runtime": exported.runtime,
        "source": {"uri": uri, "name": source.name, "version": source.version,
                   "run_id": source.run_id, "model_name": meta.model_name, "task": meta.task,
                   "class_names": list(meta.class_names), "image_size": meta.image_size,
                   "patch_size": meta.patch_size},
        "file": {"name": path.name, "bytes": path.stat().st_size, "sha256": _sha256(path),
                 "export_s": round(export_s, 2)},
        "signature": _signature(meta, compared),
        "data": data.info,
        "max_abs_diff": compared["max_abs_diff"], "atol": cfg.atol,
        "metric": {**compared["metric"], "tolerance": cfg.metric_tol},
        "latency": {**latency, "threads": torch.get_num_threads(),
                    "exported_vs_pytorch_b1": _ratio(latency, "b1_p50_ms", invert=True),
                    "exported_vs_pytorch_b32": _ratio(latency, "b32_img_per_s")},
        "machine": {"processor": platform.processor() or platform.machine(),
                    "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
        "published": None,
    }
    report_path = out / REPORT_FILE
    report_path.write_text(json.dumps(report, indent=2))
    if failures:
        log.warning("parity failed: %s", "; ".join(failures))
    elif source.run_id and cfg.publish:
        report["published"] = publish.log_export(
            name=source.name, version=source.version, run_id=source.run_id, fmt=cfg.format,
            files=[path, report_path], tracking_uri=cfg.tracking_uri)
        report_path.write_text(json.dumps(report, indent=2))
    report["out"] = str(out)
    return report


def _signature(meta, compared) -> dict[str, Any]:
    """Input and output tensors of the export (``-1``: the dynamic batch axis)."""
    n = (meta.image_size // meta.patch_size) ** 2
    return {
        "inputs": {"patches": {"dtype": "uint8", "shape": [-1, n, meta.patch_size ** 2 * 3]}},
        "outputs": {name: {"dtype": "float32", "shape": [-1, *shape]}
                    for name, shape in compared["output_shapes"].items()},
    }


def _ratio(latency: dict[str, dict[str, float]], key: str, invert: bool = False) -> float | None:
    a, b = latency["pytorch_eager"].get(key), latency["exported"].get(key)
    if not a or not b:
        return None
    return round(a / b if invert else b / a, 3)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for pkg in ("torch", "onnx", "onnxruntime", "onnxscript"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "not installed"
    return out
