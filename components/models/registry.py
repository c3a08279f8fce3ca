"""Model registry: a name → a spec (task, default input size, a builder). ``build_model``.

Each family module registers its names with :func:`register`; this module imports them
lazily so ``list_models()`` and ``build_model()`` see every name.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import nn

_FAMILY_MODULES = ("components.models.classifiers", "components.models.yolos", "components.models.detr",
                  "components.models.hf_detectors")


@dataclass(frozen=True)
class ModelSpec:
    """A registered model name.

    ``builder(num_classes=..., img_size=..., **defaults | overrides)`` returns the model.
    """

    name: str
    task: str
    family: str
    builder: Callable[..., nn.Module]
    img_size: int | tuple[int, int]
    patch_size: int
    defaults: dict[str, Any] = field(default_factory=dict)
    default_num_classes: int = 1000
    description: str = ""


_REGISTRY: dict[str, ModelSpec] = {}
_loaded = False


def register(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is registered twice")
    _REGISTRY[spec.name] = spec
    return spec


def _load_families() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in _FAMILY_MODULES:
            importlib.import_module(module)


def list_models(task: str | None = None) -> list[str]:
    """Every registered name (optionally of one task), sorted."""
    _load_families()
    return sorted(n for n, s in _REGISTRY.items() if task is None or s.task == task)


def get_spec(name: str) -> ModelSpec:
    _load_families()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; known: {', '.join(list_models())}") from None


def build_model(
    name: str, *, num_classes: int | None = None, img_size: int | tuple[int, int] | list[int] | None = None,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model with random weights (nothing is downloaded).

    Args:
        name: a name from :func:`list_models`.
        num_classes: classes (detection: object classes, without the no-object class);
            defaults to the spec's (1000 for classifiers, 91 for detectors).
        img_size: input size (int = square, or ``(h, w)``); defaults to the spec's.
        overrides: architecture keywords (e.g. ``depth``, ``embed_dim``, ``head``,
            ``num_queries``, ``mean``, ``std``); stored in ``model.build_config``.
    Returns:
        A :class:`components.models.base.VisionModel` with ``.task``, ``.img_size``,
        ``.patch_size``, ``.mean``, ``.std``, ``.name`` and ``.build_config`` so that
        ``build_model(model.name, **model.build_config)`` rebuilds the same architecture.
    """
    spec = get_spec(name)
    num_classes = spec.default_num_classes if num_classes is None else int(num_classes)
    if img_size is None:
        img_size = spec.img_size
    elif not isinstance(img_size, int):
        img_size = tuple(int(v) for v in img_size)  # type: ignore[assignment]
    kwargs = {**spec.defaults, **overrides}
    model = spec.builder(num_classes=num_classes, img_size=img_size, **kwargs)
    model.name = name
    model.build_config = {
        "num_classes": num_classes,
        "img_size": img_size if isinstance(img_size, int) else list(img_size),
        **overrides,
    }
    return model
