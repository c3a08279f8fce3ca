"""The two stages of the batch-inference pipeline and how they are wired in Ray Data.

::

    records (driver) ─► decode_rows   (Ray tasks, CPU: read bytes → decode → eval transform)
                    ─► Predictor      (actor pool: one model replica per actor, batched forward)
                    ─► Arrow tables   (one row per image; a bad image is a row with ``error``)

:func:`decode_rows` rows: ``image_id`` int64, ``file`` str, ``sha256`` str (of the file's
bytes), ``height``/``width`` int64 (original pixels), ``patches`` uint8 ``[N, P*P*3]``
(:func:`model_input`: the eval transform, whole image resized to the model's size)
and ``error`` str (``""`` for a good image; else the skip reason, with zero patches).

:class:`Predictor` answers with an Arrow table: ``image_id``, ``file``, ``sha256``,
``height``, ``width``, ``error``, the task's prediction columns
(:mod:`components.predict.outputs`) and the constant ``model_uri``, ``model_name``,
``model_version``, ``data_fingerprint``. Images with an ``error`` skip the forward pass and
carry empty predictions.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from components.data.fs import Location

if TYPE_CHECKING:  # a decode task imports this module: it needs neither torch nor the model
    from components.predict.model_ref import ModelRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DecodeSpec:
    """What a decode task needs (picklable)."""

    images: Location
    image_size: int
    patch_size: int
    max_pixels: int
    reduced: bool = True
    letterbox: bool = False  # a letterboxed detector: rows also carry valid_h / valid_w


def model_input(data: bytes, *, image_size: int, patch_size: int, max_pixels: int,
                reduced: bool = True) -> tuple[np.ndarray, tuple[int, int]]:
    """Encoded bytes → (patches uint8 ``[N, P*P*3]``, original ``(H, W)``): the eval
    transform; with ``reduced``, a JPEG is decoded at the smallest reduced scale that still
    covers ``image_size`` (``decode_at_size``), as the data layer's eval dataset does.

    Raises ``BadImageError`` for bytes that are no usable image.
    """
    from components.data.image_io import decode_at_size, preprocess

    rgb, orig_hw = decode_at_size(data, (image_size, image_size) if reduced else None,
                                  max_pixels=max_pixels)
    patches, _ = preprocess(rgb, image_size=image_size, patch_size=patch_size)
    return patches, orig_hw


def letterbox_input(data: bytes, *, image_size: int, patch_size: int, max_pixels: int,
                    reduced: bool = True
                    ) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """:func:`model_input` for a letterboxed detector: the val dataset's letterbox (longer
    side to ``image_size``, padded canvas); also returns the valid region ``(h, w)``."""
    from components.data.image_io import decode_at_size
    from components.data.transforms import ImageTransform, letterbox_preprocess

    transform = ImageTransform(task="detection", training=False, image_size=image_size,
                               letterbox=True, patch_size=patch_size)
    rgb, orig_hw = decode_at_size(data, transform.min_decode_size if reduced else None,
                                  max_pixels=max_pixels)
    patches, _, valid = letterbox_preprocess(rgb, image_size=image_size, patch_size=patch_size)
    return patches, orig_hw, valid


def decode_rows(batch: dict[str, np.ndarray], spec: DecodeSpec) -> dict[str, np.ndarray]:
    """Records ``{"image_id" [B], "file" [B]}`` → decoded rows (see the module docs)."""
    import cv2

    from components.data.fs import PathEscapeError
    from components.data.image_io import BadImageError

    cv2.setNumThreads(1)  # one CPU per task: OpenCV's own threads would only contend
    n = len(batch["image_id"])
    tokens = (spec.image_size // spec.patch_size) ** 2
    patches = np.zeros((n, tokens, spec.patch_size ** 2 * 3), np.uint8)
    sizes = np.zeros((n, 2), np.int64)
    valid = np.zeros((n, 2), np.int64)
    errors, digests = [], []
    for i in range(n):
        file, error, digest = str(batch["file"][i]), "", ""
        try:
            data = spec.images.read(file)
            digest = hashlib.sha256(data).hexdigest()
            geometry = {"image_size": spec.image_size, "patch_size": spec.patch_size,
                        "max_pixels": spec.max_pixels, "reduced": spec.reduced}
            if spec.letterbox:
                patches[i], sizes[i], valid[i] = letterbox_input(data, **geometry)
            else:
                patches[i], sizes[i] = model_input(data, **geometry)
        except BadImageError as err:
            error = err.reason
        except PathEscapeError as err:
            error = str(err)
        except (FileNotFoundError, IsADirectoryError):
            error = "missing file"
        except (OSError, ValueError) as err:
            error = f"unreadable file ({err})"
        if error:
            log.warning("skipping %s: %s", file, error)
        errors.append(error)
        digests.append(digest)
    rows = {"image_id": np.asarray(batch["image_id"], np.int64),
            "file": np.asarray([str(f) for f in batch["file"]], dtype=object),
            "sha256": np.asarray(digests, dtype=object), "height": sizes[:, 0],
            "width": sizes[:, 1], "patches": patches, "error": np.asarray(errors, dtype=object)}
    if spec.letterbox:
        rows |= {"valid_h": valid[:, 0], "valid_w": valid[:, 1]}
    return rows


@dataclass(frozen=True)
class PredictorSpec:
    """What a model actor needs (picklable): the model and the output settings."""

    model: ModelRef
    threads: int
    precision: str
    use_gpu: bool
    top_k: int
    score_threshold: float
    max_detections: int
    keep_logits: bool
    data_fingerprint: str


def load_model(directory, device):
    """A checkpoint directory → (its model in eval mode on ``device``, its meta): the
    architecture rebuilt from ``vitpipe.json``, the safetensors weights loaded strictly.

    A model actor starts with only torch and the model code imported (not MLflow: the
    registry's download ran on the driver, or is read from the node's cache).
    """
    from components.core.checkpoint import CheckpointError, load_checkpoint
    from components.models import build_model

    state_dict, meta = load_checkpoint(directory)
    try:
        model = build_model(meta.model_name, **meta.model_config)
        model.load_state_dict(state_dict, strict=True)
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{directory}: cannot load {meta.model_name!r}: "
                              f"{str(err).strip().splitlines()[-1]}") from None
    return model.to(device).eval(), meta


class Predictor:
    """A Ray Data callable class: one model replica, batched forward passes (``__call__``)."""

    def __init__(self, spec: PredictorSpec):
        import torch

        from components.core.device import autocast_dtype, pick_device
        from components.predict.outputs import OUTPUTS

        torch.set_num_threads(spec.threads)
        self.device = pick_device(prefer_gpu=spec.use_gpu)
        self.model, self.meta = load_model(spec.model.local_dir(), self.device)
        # auto: bf16 where this replica's forward pass is measured faster in it (cached)
        self.dtype = autocast_dtype(self.device, spec.precision, self.model, train=False)
        self.grid = (self.meta.image_size // self.meta.patch_size,) * 2
        self.outputs = OUTPUTS[self.meta.task](
            self.meta, model=self.model, top_k=spec.top_k, score_threshold=spec.score_threshold,
            max_detections=spec.max_detections, keep_logits=spec.keep_logits)
        self.constants = {"model_uri": spec.model.uri, "model_name": self.meta.model_name,
                          "model_version": spec.model.version,
                          "data_fingerprint": spec.data_fingerprint}

    def forward(self, patches: np.ndarray, valid_hw: "torch.Tensor | None" = None):
        """uint8 ``[B, N, P*P*3]`` (+ a letterboxed detector's ``valid_hw`` ``[B, 2]``) → the
        model's raw outputs (logits, or the detector's dict)."""
        import torch

        from components.core.device import autocast

        x = torch.from_numpy(np.ascontiguousarray(patches)).to(self.device, non_blocking=True)
        padding = {"valid_hw": valid_hw} if valid_hw is not None and getattr(
            self.model, "takes_pixel_mask", False) else {}
        with torch.inference_mode(), autocast(self.device, self.dtype):
            return self.model(x, self.grid, **padding)

    def __call__(self, batch: dict[str, np.ndarray]):
        import pyarrow as pa
        import torch

        errors = np.asarray(batch["error"], dtype=object)
        good = np.flatnonzero(errors == "")
        orig_hw = torch.from_numpy(np.stack([batch["height"], batch["width"]], axis=1)[good])
        predicted: dict[str, list] = {f.name: [None] * len(errors) for f in self.outputs.fields()}
        if len(good):
            valid = (torch.from_numpy(np.stack([batch["valid_h"], batch["valid_w"]], axis=1)[good])
                     if "valid_h" in batch else None)
            values = self.outputs.columns(self.forward(batch["patches"][good], valid), orig_hw)
            for key, column in values.items():
                for i, value in zip(good, column):
                    predicted[key][i] = value
        n = len(errors)
        columns: dict[str, Any] = {
            "image_id": pa.array(batch["image_id"], pa.int64()),
            "file": pa.array([str(f) for f in batch["file"]], pa.string()),
            "sha256": pa.array([str(d) for d in batch["sha256"]], pa.string()),
            "height": pa.array(batch["height"], pa.int64()),
            "width": pa.array(batch["width"], pa.int64()),
            "error": pa.array([str(e) for e in errors], pa.string()),
        }
        for f in self.outputs.fields():
            columns[f.name] = pa.array(predicted[f.name], f.type)
        for key, value in self.constants.items():
            columns[key] = pa.array([value] * n, pa.string())
        return pa.table(columns)
