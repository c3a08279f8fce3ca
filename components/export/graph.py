"""The exported graph and its two exporters (ONNX, ``torch.export``).

What is exported is exactly what serving feeds a model (``LoadedModel.forward``): uint8
patches ``[B, N, P*P*3]`` at the checkpoint's image and patch size (the grid is fixed by the
checkpoint and baked in). Normalisation (``VisionModel.normalize_patches``: mean/std) and
the patch-to-image layout run inside the graph, so a runtime needs no preprocessing of its
own beyond the data layer's resize and patchify. The batch axis is dynamic.

Outputs (one name per tensor, the task's serving outputs: :func:`output_names`)::

    classification: logits      [B, num_classes]       float32
    detection:      pred_logits [B, Q, num_classes + 1] float32 (last = no object)
                    pred_boxes  [B, Q, 4]               float32, normalised cxcywh in 0..1
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from components.core.checkpoint import CheckpointMeta

log = logging.getLogger(__name__)

INPUT_NAME = "patches"
DEFAULT_OPSET = 20  # torch.onnx's default; both exporters support it
MIN_OPSET = 17
MAX_BATCH = 4096  # upper bound of the dynamic batch axis (torch.export needs one)
META_KEY = "vitpipe.json"  # ONNX metadata: the checkpoint's CheckpointMeta as JSON
NMS_KEY = "vitpipe.nms_iou"  # ONNX metadata: the detector's NMS setting ("" = none)


def output_names(task: str) -> tuple[str, ...]:
    """The exported graph's output tensors: the task's serving outputs."""
    from components.tasks import get_task

    return get_task(task).serving_outputs


class ExportError(ValueError):
    """An export that cannot be made or used: unreadable, of another kind, unsafe to load."""


class ExportGraph(nn.Module):
    """``patches`` uint8 ``[B, N, P*P*3]`` → the task's output tensors (see module docs)."""

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.model = model
        self.grid = tuple(int(g) for g in model.grid_size)
        self.output_names = output_names(task)

    def forward(self, patches: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        out = self.model(patches, self.grid)
        if isinstance(out, dict):
            return tuple(out[name] for name in self.output_names)
        return out


def example_patches(meta: CheckpointMeta, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """Deterministic uint8 patches ``[batch, N, P*P*3]`` at the checkpoint's geometry."""
    side = meta.image_size // meta.patch_size
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, side * side, meta.patch_size ** 2 * 3),
                         generator=gen, dtype=torch.uint8)


def export_onnx(model: nn.Module, meta: CheckpointMeta, path: str | Path, *,
                opset: int = DEFAULT_OPSET) -> str:
    """Write ``model`` as one ONNX file; returns the exporter used (``dynamo``/``torchscript``).

    The dynamo exporter (``torch.export`` based) is tried first; the TorchScript exporter
    only if it fails (and only up to the opset it supports). The checkpoint's metadata is
    stored in the file's ``metadata_props`` (:func:`onnx_metadata`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for noisy in ("onnx_ir", "onnxscript"):  # one INFO line per rewritten initializer
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLogger(noisy).level))
    graph = ExportGraph(model, meta.task).eval()
    example = (example_patches(meta),)
    names = dict(input_names=[INPUT_NAME], output_names=list(graph.output_names))
    try:
        torch.onnx.export(
            graph, example, str(path), dynamo=True, opset_version=opset, external_data=False,
            dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
            verbose=False, **names,
        )
        exporter = "dynamo"
    except Exception as err:  # noqa: BLE001 - any dynamo failure: try the other exporter
        from torch.onnx._constants import ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET as ts_max

        if opset > ts_max:
            raise ExportError(f"the dynamo ONNX exporter failed ({type(err).__name__}: {err}) and "
                             f"the TorchScript exporter supports opset <= {ts_max}") from err
        log.warning("dynamo ONNX export failed (%s: %s); using the TorchScript exporter",
                    type(err).__name__, str(err).splitlines()[0] if str(err) else "")
        axes = {name: {0: "batch"} for name in (INPUT_NAME, *graph.output_names)}
        torch.onnx.export(graph, example, str(path), dynamo=False, opset_version=opset,
                          dynamic_axes=axes, **names)
        exporter = "torchscript"
    _write_metadata(path, onnx_metadata(model, meta))
    return exporter


def onnx_metadata(model: nn.Module, meta: CheckpointMeta) -> dict[str, str]:
    """What a runtime needs besides the graph: the checkpoint meta and the NMS setting."""
    from components.models.postprocess import model_nms_iou

    nms = model_nms_iou(model)
    return {META_KEY: meta.to_json(), NMS_KEY: "" if nms is None else repr(float(nms))}


def _write_metadata(path: Path, props: dict[str, str]) -> None:
    import onnx

    proto = onnx.load(str(path))
    kept = [p for p in proto.metadata_props if p.key not in props]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    for key, value in props.items():
        proto.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


def export_program(model: nn.Module, meta: CheckpointMeta, path: str | Path) -> str:
    """Write ``model`` as a ``torch.export`` archive (``.pt2``); returns ``"torch.export"``.

    The archive holds the graph as JSON and the weights as raw tensor bytes; the example
    inputs (which ``torch.export.save`` would pickle) are dropped, so that
    :func:`components.export.runners.load_program` can check and load it without
    unpickling anything. The checkpoint meta travels as the extra file ``vitpipe.json``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    graph = ExportGraph(model, meta.task).eval()
    program = torch.export.export(
        graph, (example_patches(meta),),
        dynamic_shapes={INPUT_NAME: {0: torch.export.Dim("batch", min=1, max=MAX_BATCH)}},
    )
    program.example_inputs = None
    torch.export.save(program, str(path), extra_files={META_KEY: meta.to_json()})
    return "torch.export"


def metadata_json(props: dict[str, str]) -> dict[str, Any]:
    """Decode :func:`onnx_metadata`'s strings (JSON only) back to values."""
    nms = props.get(NMS_KEY, "")
    return {"meta": json.loads(props[META_KEY]), "nms_iou": float(nms) if nms else None}
