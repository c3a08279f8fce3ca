"""What the production-readiness report compares, and how hard it measures.

Two lists, measured separately:

- ``cost_models``: the real-size models at their real input sizes (ViT-B/16, DeiT-S, TNT-S,
  ResNet-50, R50+ViT-B/16, DETR-R50, YOLOS-S, RT-DETRv2, D-FINE, LW-DETR), built with random
  weights: parameters, MACs, batch-1 latency, large-batch throughput, peak memory.
- ``families``: small registered variants trained on the embedded synthetic dataset for a
  stated budget (what a 2-core CPU can train in minutes). They are named by what they are
  (the registry's description, e.g. "tiny ViT (4x96, 3 heads)"), never by a real model's name.

Every row is labelled from the model registry's description unless ``label`` is given.
``ReportConfig.quick()`` is the test-sized run (tiny models only, seconds).
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from components.core.config import StrictModel
from components.core.names import ModelTask


def _describe(name: str, overrides: dict[str, Any]) -> str:
    from components.models.registry import get_spec

    label = get_spec(name).description or name
    extra = ", ".join(f"{k}={v}" for k, v in sorted(overrides.items()))
    return f"{label}, {extra}" if extra else label


class CostModel(StrictModel):
    """One model measured for inference cost at its own input size."""

    name: str  # registered name
    img_size: int | tuple[int, int] | None = None  # None: the registered model's own input size
    batch_large: int = Field(32, ge=1)  # the throughput batch (detectors: smaller, stated)
    label: str | None = None  # None: the registry's description (what the model is)

    @property
    def title(self) -> str:
        return self.label or _describe(self.name, {})


class Family(StrictModel):
    """One trained row: a small registered variant and its recipe."""

    tiny: str  # registered name, trained for the budget
    task: ModelTask
    label: str | None = None  # None: the registry's description of ``tiny`` (+ the overrides)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_grad_norm: float = Field(1.0, ge=0)
    # build keywords (e.g. {"stem": "conv"}), and one-to-many matching for detectors
    overrides: dict[str, Any] = Field(default_factory=dict)
    match_repeats: int = Field(1, ge=1)
    # what the architecture builds in about images: "convolutions" (a CNN, a conv stem or a
    # ResNet stem before attention) or "none" (patchify + attention only)
    conv_bias: Literal["convolutions", "none"] = "none"

    @property
    def title(self) -> str:
        title = self.label or _describe(self.tiny, self.overrides)
        return title + (f", 1-to-{self.match_repeats} matching" if self.match_repeats > 1 else "")

    @property
    def key(self) -> str:
        """The family's name in MLflow metric keys: the model's, plus what is not default
        (``vit_demo``, ``vit_demo_stemconv``, ``yolos_demo_nms_iou0.5_stemconv_k3``)."""
        extra = "".join(f"_{k}{v}" for k, v in sorted(self.overrides.items()))
        if self.match_repeats > 1:
            extra += f"_k{self.match_repeats}"
        return re.sub(r"[^A-Za-z0-9_.\-]", "", self.tiny + extra)


DETECTOR_BATCH = 4  # throughput batch of the detectors: 32 images at 640-800 px is minutes on a CPU


def default_cost_models() -> list[CostModel]:
    det = {"batch_large": DETECTOR_BATCH}
    return [
        CostModel(name="resnet50", label="ResNet-50 (CNN)"),
        CostModel(name="vit_base_patch16_224"),
        CostModel(name="deit_small_patch16_224"),
        CostModel(name="tnt_s_patch16_224"),
        CostModel(name="vit_base_r50_s16_224"),
        CostModel(name="detr_resnet50", img_size=800, **det),
        CostModel(name="yolos_s", **det),
        CostModel(name="rtdetr_v2_r18", **det),
        CostModel(name="rtdetr_v2_r50", **det),
        CostModel(name="dfine_s", **det),
        CostModel(name="lwdetr_small", **det),
        CostModel(name="lwdetr_tiny", **det),
    ]


def quick_cost_models() -> list[CostModel]:
    return [CostModel(name="resnet_demo", batch_large=8), CostModel(name="vit_demo", batch_large=8),
            CostModel(name="yolos_demo", batch_large=2)]


def default_families() -> list[Family]:
    """The classifiers the training comparison trains: a small CNN, a small ViT, the same ViT
    with a convolutional stem, and a small ResNet-stem hybrid (the inductive-bias question)."""
    return [
        Family(tiny="resnet_demo", task="classification", conv_bias="convolutions"),
        Family(tiny="vit_demo", task="classification"),
        Family(tiny="vit_demo", task="classification", overrides={"stem": "conv"}, conv_bias="convolutions"),
        Family(tiny="hybrid_demo", task="classification", conv_bias="convolutions"),
        Family(tiny="tnt_demo", task="classification"),
    ]


def detection_families() -> list[Family]:
    """Small detectors (opt-in: ``--families yolos_demo,...``; minutes each to leave chance)."""
    det = {"lr": 5e-4, "weight_decay": 1e-4, "clip_grad_norm": 0.1}
    return [
        Family(tiny="detr_demo", task="detection", **det),
        Family(tiny="yolos_demo", task="detection", **det),
        Family(tiny="yolos_demo", task="detection", overrides={"stem": "conv", "nms_iou": 0.5},
               match_repeats=3, **det),
    ]


class ReportConfig(StrictModel):
    # ---- inference cost (each model in its own process, fp32 and, on a CPU with native bf16, bf16)
    cost: bool = True
    cost_models: list[CostModel] = Field(default_factory=default_cost_models)
    warmup_runs: int = Field(2, ge=1)  # untimed forward passes before the batch-1 timings
    latency_runs: int = Field(5, ge=1)  # timed batch-1 runs (the median is reported)
    throughput_batches: int = Field(1, ge=1)  # timed large batches, after one untimed
    cost_precision: Literal["fp32+bf16", "fp32", "bf16"] = "fp32+bf16"  # fp32+bf16: bf16 only where native
    # torch intra-op threads for every measurement (None: torch's default, one per core).
    threads: int | None = Field(None, ge=1)
    cost_timeout_s: float = Field(600.0, gt=0)  # per model process
    # batch-1 latency bounds the findings sort the models into (e.g. interactive, near-real-time)
    latency_targets_ms: list[float] = Field(default_factory=lambda: [100.0, 1000.0])
    # ---- training comparison on the embedded synthetic dataset
    train: bool = True
    families: list[Family] = Field(default_factory=default_families)
    data_root: str | None = None  # a synthetic dataset; None: synthesize one under the output
    synth_num_train: int = Field(1000, ge=8)
    synth_num_val: int = Field(200, ge=4)
    classification_image_size: int = Field(64, ge=32)
    detection_image_size: int = Field(96, ge=32)
    batch_size: int = Field(32, ge=1)
    augment_passes: int = Field(3, ge=1)  # distinct augmented passes, replayed cyclically
    max_epochs: int = Field(40, ge=1)
    time_budget_s: float = Field(75.0, gt=0)  # per model, optimizer-step seconds
    target_top1: float = Field(0.9, ge=0, le=1)
    target_map50: float = Field(0.5, ge=0, le=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # training (autocast_dtype's rule)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "ReportConfig":
        """Test-sized: tiny models for cost too, one short epoch each, brief timings (< 1 min)."""
        settings = dict(cost_models=quick_cost_models(), warmup_runs=1, latency_runs=3,
                        families=[Family(tiny="vit_demo", task="classification"), *detection_families()[1:2]],
                        synth_num_train=48, synth_num_val=16, augment_passes=1, max_epochs=1,
                        batch_size=16, time_budget_s=20.0, threads=1)
        settings.update(overrides)
        return cls(**settings)
