"""The layer map: every package of ``components/`` in one tier, lowest first.

A module may import from its own package and from packages of LOWER tiers only (imports
inside functions included); packages of one tier do not import each other; nothing in
``components/`` imports ``pipelines/``, which sits on top. ``tests/test_layers.py`` holds
the code to this map, and ``docs/platform.md`` shows it.
"""

from __future__ import annotations

LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),         # contracts: checkpoint I/O, typed config base, device/precision, batch grid
    ("data",),         # readers, validation, transforms, patchify, the Ray Dataset
    ("models",),       # model builders and registry, criterion, weight import
    ("evaluation",),   # THE evaluator: top-k accuracy, COCO mAP, plots
    ("tasks",),        # one Task object per task
    ("tracking",),     # MLflow runs, registry, promotion gate
    ("training",),     # Ray Train: driver, worker loop, checkpoints
    ("tune", "export"),  # hyperparameter search over training; ONNX / torch.export of a checkpoint
    ("serving", "report", "predict"),  # Ray Serve (may run an exported model), report, batch inference
    ("cli",),          # the vitpipe command
)
TOP = "pipelines"  # thin entry points, above every package of components/


def tier(package: str) -> int:
    """The tier of a ``components`` package (``pipelines``: above them all)."""
    if package == TOP:
        return len(LAYERS)
    for i, packages in enumerate(LAYERS):
        if package in packages:
            return i
    raise KeyError(f"package {package!r} is not in the layer map (components/core/layers.py)")
