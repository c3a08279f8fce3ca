"""Exported files as ``nn.Module`` look-alikes of the checkpoint's model.

:class:`OnnxModule` (onnxruntime, CPU provider) and :class:`ProgramModule` (a
``torch.export`` archive) take what a ``VisionModel`` takes — ``(patches, grid)`` with
patches uint8 ``[B, N, P*P*3]`` — and return what it returns: logits ``[B, C]``, or
``{"pred_logits": [B, Q, C+1], "pred_boxes": [B, Q, 4]}``. They carry ``patch_size``,
``grid_size``, ``img_size`` and ``nms_iou`` like the model, so THE evaluator
(``components.evaluation``), detection postprocessing and the serving runtime run
them without knowing they are not PyTorch modules.

Nothing is unpickled: ONNX is protobuf with JSON metadata; a ``.pt2`` archive is checked to
hold only JSON and raw tensor bytes (:func:`check_program_archive`) before it is loaded.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from components.core.checkpoint import CheckpointMeta
from components.export.graph import (
    INPUT_NAME, META_KEY, ExportError, metadata_json, output_names,
)


class _ExportedModule(nn.Module):
    """Shared attributes and the ``(patches, grid)`` contract of the runners."""

    runtime = ""

    def __init__(self, meta: CheckpointMeta, nms_iou: float | None) -> None:
        super().__init__()
        self.meta = meta
        self.task = meta.task
        self.name = meta.model_name
        self.patch_size = int(meta.patch_size)
        self.img_size = int(meta.image_size)
        self.nms_iou = nms_iou
        side = meta.image_size // meta.patch_size
        self.grid_size = (side, side)
        self.output_names = output_names(meta.task)

    def _check(self, patches: torch.Tensor, grid: Any) -> torch.Tensor:
        from components.core.batch import grid_tuple

        if grid_tuple(grid) != self.grid_size:
            raise ValueError(f"the exported {self.name} takes a {self.grid_size} patch grid, "
                             f"got {grid_tuple(grid)}")
        want = self.patch_size ** 2 * 3
        if patches.ndim != 3 or patches.shape[1:] != (self.grid_size[0] * self.grid_size[1], want):
            raise ValueError(f"the exported {self.name} takes patches [B, "
                             f"{self.grid_size[0] * self.grid_size[1]}, {want}], "
                             f"got {tuple(patches.shape)}")
        return patches.detach().to("cpu", torch.uint8)

    def _as_outputs(self, tensors: list[torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        if len(self.output_names) == 1:  # one output tensor (a classifier's logits)
            return tensors[0]
        return dict(zip(self.output_names, tensors))


class OnnxModule(_ExportedModule):
    """An ONNX export run by onnxruntime's CPU provider (fp32)."""

    runtime = "onnx"

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        import onnxruntime as ort

        path = Path(path)
        if not path.is_file():
            raise ExportError(f"{path} does not exist")
        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.log_severity_level = 3  # errors only
        # no busy-waiting between runs: it would take the cores from whatever runs next
        # (the PyTorch model measured in turns, the other replicas of a shared node)
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            session = ort.InferenceSession(str(path), sess_options=options,
                                           providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own error types
            raise ExportError(f"{path} is not a loadable ONNX model: "
                              f"{str(err).splitlines()[0][:200]}") from None
        props = session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise ExportError(f"{path} is not a vitpipe export: no {META_KEY} metadata")
        decoded = metadata_json(props)
        super().__init__(CheckpointMeta.from_dict(decoded["meta"]), decoded["nms_iou"])
        self.path = path
        self.threads = options.intra_op_num_threads
        self.session = session
        have = [o.name for o in session.get_outputs()]
        if have != list(self.output_names):
            raise ExportError(f"{path}: outputs {have}, expected {list(self.output_names)}")

    def forward(self, patches: torch.Tensor, grid: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        batch = self._check(patches, grid).numpy()
        outputs = self.session.run(list(self.output_names), {INPUT_NAME: batch})
        return self._as_outputs([torch.from_numpy(np.asarray(o)) for o in outputs])


class ProgramModule(_ExportedModule):
    """A ``torch.export`` archive (``.pt2``) run by PyTorch (its ``ExportedProgram.module()``)."""

    runtime = "torch.export"

    def __init__(self, path: str | Path) -> None:
        path = Path(path)
        check_program_archive(path)
        extra = {META_KEY: ""}
        program = torch.export.load(str(path), extra_files=extra)
        if not extra[META_KEY]:
            raise ExportError(f"{path} is not a vitpipe export: no {META_KEY} inside")
        meta = CheckpointMeta.from_dict(json.loads(extra[META_KEY]))
        super().__init__(meta, None)
        self.path = path
        self.program = program.module()

    def train(self, mode: bool = True) -> "ProgramModule":
        """Eval only: an exported program has no train mode (and refuses ``train()``)."""
        self.training = mode
        return self

    def forward(self, patches: torch.Tensor, grid: Any) -> torch.Tensor | dict[str, torch.Tensor]:
        out = self.program(self._check(patches, grid))
        return self._as_outputs(list(out) if isinstance(out, (tuple, list)) else [out])


def check_program_archive(path: str | Path) -> None:
    """Refuse a ``.pt2`` archive that ``torch.export.load`` would unpickle anything from.

    Allowed: JSON records, raw tensor payloads whose config says ``use_pickle: false``,
    and an empty sample-inputs record (:func:`components.export.graph.export_program`
    writes none). Anything else — pickled weights or constants, script objects, sample
    inputs, the legacy ``constants/*.pt`` file — is an :class:`ExportError`.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        raise ExportError(f"{path} is not a torch.export archive (not a zip file)")
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        for name in names:
            parts = name.split("/")
            if "sample_inputs" in parts and archive.getinfo(name).file_size:
                raise ExportError(f"{path}: holds pickled sample inputs ({name}); refusing to load")
            if "constants" in parts and name.endswith(".pt"):
                raise ExportError(f"{path}: holds legacy pickled constants ({name})")
            if name.endswith("_config.json") and ("weights" in parts or "constants" in parts):
                try:
                    config = json.loads(archive.read(name))["config"]
                except (ValueError, KeyError, TypeError):
                    raise ExportError(f"{path}: {name} is not a payload config") from None
                for fqn, payload in config.items():
                    pickled = payload.get("use_pickle") or not str(
                        payload.get("path_name", "")).startswith(("weight_", "tensor_"))
                    if pickled:
                        raise ExportError(f"{path}: {fqn} is stored pickled; refusing to load")
        if not any(n.endswith(f"models/{Path(n).stem}.json") for n in names):
            raise ExportError(f"{path} holds no exported program")


def open_exported(path: str | Path, fmt: str, *, threads: int | None = None) -> _ExportedModule:
    """The runner of an exported file of format ``onnx`` or ``torch-export``."""
    if fmt == "onnx":
        return OnnxModule(path, threads=threads)
    if fmt == "torch-export":
        return ProgramModule(path)
    raise ExportError(f"unknown export format {fmt!r}: expected onnx or torch-export")
