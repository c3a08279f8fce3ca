"""The checkpoint contract: what training writes and registry, serving and fine-tuning read.

A checkpoint is a directory holding

- ``model.safetensors``: the model's ``state_dict`` (tensors only, never pickled);
- ``vitpipe.json``: :class:`CheckpointMeta`, enough to rebuild the model without the
  training code's objects (model name and build config, class names, image and patch size,
  normalisation, data fingerprint, step, metrics).

Resume state (optimizer, scheduler, data position) lives beside these files and is written
by ``components.training``; it follows the same rule: safetensors + JSON, nothing pickled.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import MISSING as _MISSING
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, get_args

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from components.core.names import ModelTask

WEIGHTS_FILE = "model.safetensors"
META_FILE = "vitpipe.json"
FORMAT_VERSION = 1

Task = ModelTask  # what a checkpoint's model is


class CheckpointError(ValueError):
    """A checkpoint directory is missing, incomplete or not of the expected kind."""


@dataclass
class CheckpointMeta:
    """Everything needed to rebuild and feed a model, stored as ``vitpipe.json``.

    ``model_config`` holds the keyword arguments of ``components.models.build_model``
    (``num_classes``, ``img_size`` and any overrides), so ``build_model(model_name,
    **model_config)`` rebuilds the architecture exactly.
    """

    model_name: str
    task: Task
    model_config: dict[str, Any]
    class_names: list[str]
    image_size: int
    patch_size: int
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)
    data_fingerprint: str = ""
    step: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "CheckpointMeta":
        known = set(cls.__dataclass_fields__)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise CheckpointError(f"{META_FILE} has unknown keys {unknown}")
        missing = sorted(
            k for k, f in cls.__dataclass_fields__.items()
            if k not in raw and f.default is f.default_factory is _MISSING
        )
        if missing:
            raise CheckpointError(f"{META_FILE} lacks required keys {missing}")
        if raw.get("task") not in get_args(ModelTask):
            raise CheckpointError(f"{META_FILE}: unknown task {raw.get('task')!r}")
        meta = _validated(cls, raw)
        if meta.format_version > FORMAT_VERSION:
            raise CheckpointError(
                f"{META_FILE} has format_version {meta.format_version}; this vitpipe reads "
                f"up to {FORMAT_VERSION}: upgrade vitpipe"
            )
        return meta


FREE_FORM = ("metrics", "extra")  # read as they are: any JSON object


def _validated(cls: type[CheckpointMeta], raw: dict[str, Any]) -> CheckpointMeta:
    """``raw`` as ``cls``: each field that rebuilds or feeds the model of its declared type
    (a meta file is data from storage), ``metrics`` and ``extra`` any JSON object."""
    from pydantic import TypeAdapter, ValidationError

    for key in FREE_FORM:
        if not isinstance(raw.get(key, {}), dict):
            raise CheckpointError(f"{META_FILE}: {key} must be a JSON object")
    try:
        meta = TypeAdapter(cls).validate_python({k: v for k, v in raw.items() if k not in FREE_FORM})
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise CheckpointError(f"{META_FILE}: {where}: {first['msg']}") from None
    for key in FREE_FORM:
        if key in raw:
            setattr(meta, key, raw[key])
    return meta


def save_checkpoint(
    directory: str | Path, state_dict: dict[str, torch.Tensor], meta: CheckpointMeta
) -> Path:
    """Write ``state_dict`` and ``meta`` into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in state_dict.items()}
    save_file(_unshare(tensors), str(directory / WEIGHTS_FILE))
    (directory / META_FILE).write_text(meta.to_json())
    return directory


def read_meta(directory: str | Path) -> CheckpointMeta:
    """Read only ``vitpipe.json`` of a checkpoint directory."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a vitpipe checkpoint: no {META_FILE}")
    try:
        raw = json.loads(path.read_bytes())
    except (ValueError, RecursionError) as err:  # bad JSON or UTF-8, a too-deep or huge value
        raise CheckpointError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return CheckpointMeta.from_dict(raw)


def load_checkpoint(
    directory: str | Path, map_location: str | torch.device = "cpu"
) -> tuple[dict[str, torch.Tensor], CheckpointMeta]:
    """Read a checkpoint directory: ``(state_dict, meta)``. Never unpickles anything."""
    meta = read_meta(directory)
    weights = Path(directory) / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointError(f"{directory} is not a vitpipe checkpoint: no {WEIGHTS_FILE}")
    try:
        return load_file(str(weights), device=str(map_location)), meta
    except SafetensorError as err:
        raise CheckpointError(f"{weights} is not a readable safetensors file: {err}") from None


def _unshare(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share storage (tied weights): clone the repeats."""
    seen: set[int] = set()
    out = {}
    for key, value in tensors.items():
        ptr = value.untyped_storage().data_ptr() if value.numel() else -1
        out[key] = value.clone() if ptr in seen else value
        if ptr != -1:
            seen.add(ptr)
    return out


def load_model(
    directory: str | Path,
    build: Callable[..., torch.nn.Module],
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild the model of a checkpoint directory with ``build(model_name, **model_config)``
    (the model registry's ``build_model``), load its weights strictly, in eval mode on ``device``.

    Raises :class:`CheckpointError` when the model cannot be built or the weights do not fit.
    """
    state_dict, meta = load_checkpoint(directory)
    try:
        model = build(meta.model_name, **meta.model_config)
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{directory}: cannot build {meta.model_name!r}: {err}") from None
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise CheckpointError(
            f"{directory}: weights do not fit {meta.model_name}: {str(err).splitlines()[-1]}"
        ) from None
    if missing or unexpected:
        raise CheckpointError(
            f"{directory}: weights do not fit {meta.model_name} "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return model.to(device).eval(), meta
