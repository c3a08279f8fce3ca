"""One loaded model version and its batched forward pass.

:func:`load_version` turns a registry URI into a :class:`LoadedModel`: the alias is resolved
to a fixed version (recorded in ``resolved``), the checkpoint is fetched into a local cache
keyed by version (a restart does not download again), the model is built on the device,
and warmed up. :meth:`LoadedModel.run` is what one dynamic batch executes: it stacks the
requests' patch tensors, runs one forward pass under ``torch.inference_mode`` (bf16
autocast where the hardware has it), and splits the outputs back per request.

``runtime="onnx"`` serves the version's ONNX export instead (``vitpipe export``; found
through the version's ``export.onnx`` tag, cached beside the checkpoint): onnxruntime's CPU
provider in fp32, behind the same ``(patches, grid)`` call, so batching, postprocessing
and responses are the PyTorch path's.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from components.core.checkpoint import CheckpointMeta
from components.core.device import autocast, autocast_dtype, pick_device
from components.data.config import with_boxes
from components.serving.settings import CACHE_ENV
from components.tasks import get_task

log = logging.getLogger(__name__)


@dataclass
class InferItem:
    """One request's model input, made by the ingress.

    ``patches`` uint8 ``[N, P*P*3]`` from ``image_io.preprocess`` at ``image_size`` (or,
    for a letterboxed detector, ``transforms.letterbox_preprocess``: the valid region is
    ``letterbox_hw(*orig_hw, image_size)``); ``orig_hw`` the decoded image's ``(height,
    width)`` (boxes are mapped back to it).
    """

    patches: np.ndarray
    image_size: int
    patch_size: int
    orig_hw: tuple[int, int]


def default_cache_dir() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "vitpipe" / "models")


@dataclass
class LoadedModel:
    """A model version ready to serve (never mutated after warm-up; swapped whole)."""

    model: torch.nn.Module
    meta: CheckpointMeta
    name: str
    version: str
    alias: str | None
    uri: str
    device: torch.device
    autocast: torch.dtype | None
    runtime: str = "torch"
    loaded_at: float = field(default_factory=time.time)
    # forward passes and attention captures (which switch blocks to the explicit path)
    # never overlap on one model
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def task(self) -> str:
        return self.meta.task

    @property
    def letterbox(self) -> bool:
        """Trained on letterboxed images (``meta.extra["letterbox"]``): requests are too."""
        return with_boxes(self.task) and bool(self.meta.extra.get("letterbox"))

    def valid_hw(self, items: list["InferItem"]) -> torch.Tensor | None:
        """``[B, 2]`` valid regions of letterboxed items (None when not letterboxed)."""
        if not self.letterbox:
            return None
        from components.data.letterbox import letterbox_hw

        return torch.tensor([letterbox_hw(*item.orig_hw, self.meta.image_size) for item in items],
                            dtype=torch.int64)

    @property
    def grid(self) -> tuple[int, int]:
        side = self.meta.image_size // self.meta.patch_size
        return (side, side)

    def describe(self) -> dict[str, Any]:
        """What ``/v1/models`` shows about this version."""
        return {
            "name": self.name, "version": self.version, "alias": self.alias, "uri": self.uri,
            "task": self.task, "model_name": self.meta.model_name,
            "class_names": list(self.meta.class_names), "image_size": self.meta.image_size,
            "patch_size": self.meta.patch_size, "letterbox": self.letterbox,
            "precision": str(self.autocast).replace("torch.", "") if self.autocast else "float32",
            "device": str(self.device), "runtime": self.runtime, "loaded_at": self.loaded_at,
            "data_fingerprint": self.meta.data_fingerprint,
        }

    def to_model_input(self, item: InferItem) -> np.ndarray:
        """The item's patches at this version's geometry (resampled if made for another)."""
        if (item.image_size, item.patch_size) == (self.meta.image_size, self.meta.patch_size):
            return item.patches
        # Only while a new version with another input size is being rolled out.
        from components.data.image_io import preprocess
        from components.data.patchify import unpatchify

        side = item.image_size // item.patch_size
        image = unpatchify(item.patches, (side, side), item.patch_size)
        if self.letterbox:
            from components.data.letterbox import letterbox_hw
            from components.data.transforms import letterbox_preprocess

            vh, vw = letterbox_hw(*item.orig_hw, item.image_size)
            return letterbox_preprocess(np.ascontiguousarray(image[:vh, :vw]),
                                        image_size=self.meta.image_size,
                                        patch_size=self.meta.patch_size)[0]
        patches, _ = preprocess(
            np.ascontiguousarray(image), image_size=self.meta.image_size,
            patch_size=self.meta.patch_size,
        )
        return patches

    def forward(self, patches: np.ndarray, valid_hw: torch.Tensor | None = None) -> Any:
        """uint8 ``[B, N, P*P*3]`` (+ letterbox ``valid_hw`` ``[B, 2]``) → raw model outputs
        (fp32 tensors on the CPU)."""
        batch = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device, non_blocking=True)
        padding = {"valid_hw": valid_hw} if valid_hw is not None and getattr(
            self.model, "takes_pixel_mask", False) else {}
        with self.lock, torch.inference_mode(), autocast(self.device, self.autocast):
            outputs = self.model(batch, self.grid, **padding)
        if isinstance(outputs, dict):
            return {k: v.float().cpu() for k, v in outputs.items() if isinstance(v, torch.Tensor)}
        return outputs.float().cpu()

    def run(self, items: list[InferItem], *, top_k: int, score_threshold: float,
            max_detections: int) -> list[dict[str, Any]]:
        """One dynamic batch: ``items`` → one result dict per item (same order)."""
        patches = np.stack([self.to_model_input(item) for item in items])
        outputs = self.forward(patches, self.valid_hw(items))
        common = {"version": self.version, "name": self.name, "class_names": self.meta.class_names,
                  "image_size": self.meta.image_size, "patch_size": self.meta.patch_size}
        orig = torch.tensor([item.orig_hw for item in items], dtype=torch.int64)
        found = get_task(self.task).postprocess(outputs, model=self.model, orig_hw=orig,
                                                score_threshold=score_threshold, max_detections=max_detections)
        return [{**common, **result} for result in found]

    def warm_up(self, batch_sizes: tuple[int, ...] = (1, 4)) -> float:
        """Run the forward pass once per batch size (kernel selection, allocator); seconds."""
        start = time.perf_counter()
        n = self.grid[0] * self.grid[1]
        for size in batch_sizes:
            self.forward(np.zeros((size, n, self.meta.patch_size ** 2 * 3), np.uint8))
        return time.perf_counter() - start


def serving_autocast(device: torch.device, precision: str, runtime: str,
                     model: torch.nn.Module) -> torch.dtype | None:
    """The autocast dtype a version is served with: ONNX exports always run in fp32."""
    return None if runtime == "onnx" else autocast_dtype(device, precision, model)


def load_version(uri: str, *, task: str, cache_dir: str | Path | None = None,
                 precision: str = "auto", tracking_uri: str | None = None,
                 warmup_batch_sizes: tuple[int, ...] = (1, 4),
                 runtime: str = "torch") -> LoadedModel:
    """Registry URI → a warmed-up :class:`LoadedModel` (alias resolved to a fixed version)."""
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    start = time.perf_counter()
    if runtime == "onnx":
        model, meta, resolved, device = _load_onnx(uri, task=task, cache=cache,
                                                   tracking_uri=tracking_uri)
    else:
        from components.tracking.registry import load_registered

        device = pick_device()
        model, meta, resolved = load_registered(
            uri, cache_dir=cache, tracking_uri=tracking_uri, device=str(device), task=task,
        )
    loaded = LoadedModel(
        model=model.eval(), meta=meta, name=resolved.name, version=str(resolved.version),
        alias=resolved.alias, uri=uri, device=device,
        autocast=serving_autocast(device, precision, runtime, model), runtime=runtime,
    )
    warm = loaded.warm_up(warmup_batch_sizes)
    log.info("loaded %s → version %s (%s, %s) in %.2fs, warm-up %.2fs", uri, loaded.version,
             meta.model_name, runtime, time.perf_counter() - start, warm)
    return loaded


def _load_onnx(uri: str, *, task: str, cache: Path, tracking_uri: str | None):
    """The version's ONNX export as a module (CPU), its checkpoint meta and the version."""
    from components.export.publish import fetch_export
    from components.export.runners import OnnxModule
    from components.tracking.registry import RegistryError, resolve_uri

    resolved = resolve_uri(uri, tracking_uri=tracking_uri)
    path = fetch_export(resolved.name, resolved.version, "onnx", cache_dir=cache,
                        tracking_uri=tracking_uri)
    model = OnnxModule(path)
    if model.meta.task != task:
        raise RegistryError(f"{resolved.uri} is a {model.meta.task} model, not {task}")
    return model, model.meta, resolved, torch.device("cpu")
