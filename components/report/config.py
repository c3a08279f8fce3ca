"""What the production-readiness report compares, and how hard it measures.

Eight families, each with a paper-sized model (parameters, MACs, latency, throughput,
memory) and its tiny registered variant (trained to a target on the embedded dataset,
which a 2-core CPU can do in minutes). ``ReportConfig.quick()`` is the test-sized run.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field

from components.core.config import StrictModel
from components.core.names import ModelTask


class Family(StrictModel):
    """One row of the report: a paper-sized model and its tiny trainable variant."""

    label: str
    task: ModelTask
    full: str  # registered name, measured for cost
    tiny: str  # registered name, trained to the target
    # Input side for the cost measurements (None: the model's own default). Detectors are
    # measured at 512x512 so that a batch of 32 stays bounded on a small CPU.
    full_img_size: int | None = None
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.05, ge=0)
    clip_grad_norm: float = Field(1.0, ge=0)
    # build keywords for both models (e.g. {"stem": "conv"}), and one-to-many matching for detectors
    overrides: dict[str, Any] = Field(default_factory=dict)
    match_repeats: int = Field(1, ge=1)

    @property
    def key(self) -> str:
        """The family's name in MLflow metric keys: the tiny model's, plus what is not default
        (``vit_demo``, ``vit_demo_stemconv``, ``yolos_demo_nms_iou0.5_stemconv_k3``)."""
        extra = "".join(f"_{k}{v}" for k, v in sorted(self.overrides.items()))
        if self.match_repeats > 1:
            extra += f"_k{self.match_repeats}"
        return re.sub(r"[^A-Za-z0-9_.\-]", "", self.tiny + extra)


def default_families() -> list[Family]:
    det = {"lr": 5e-4, "weight_decay": 1e-4, "clip_grad_norm": 0.1}
    return [
        Family(label="ResNet-50 (CNN baseline)", task="classification", full="resnet50", tiny="resnet_demo"),
        Family(label="ViT-B/16", task="classification", full="vit_base_patch16_224", tiny="vit_demo"),
        Family(label="TNT-S", task="classification", full="tnt_s_patch16_224", tiny="tnt_demo"),
        Family(label="R50+ViT-B/16 hybrid", task="classification", full="vit_base_r50_s16_224",
               tiny="hybrid_demo"),
        Family(label="ViT-B/16, conv stem", task="classification", full="vit_base_patch16_224",
               tiny="vit_demo", overrides={"stem": "conv"}),
        Family(label="DETR-R50", task="detection", full="detr_resnet50", tiny="detr_demo",
               full_img_size=512, **det),
        Family(label="YOLOS-Ti", task="detection", full="yolos_ti", tiny="yolos_demo",
               full_img_size=512, **det),
        Family(label="YOLOS-Ti, conv stem, 1-to-3 matching", task="detection", full="yolos_ti",
               tiny="yolos_demo", full_img_size=512, overrides={"stem": "conv", "nms_iou": 0.5},
               match_repeats=3, **det),
    ]


class ReportConfig(StrictModel):
    families: list[Family] = Field(default_factory=default_families)
    # Cost measurements: "full" measures the paper-sized models, each in its own process;
    # "tiny" measures the tiny variants in this process (the quick mode).
    cost: bool = True  # measure inference cost at all
    cost_models: Literal["full", "tiny"] = "full"
    cost_budget_s: float = Field(6.0, gt=0)  # seconds of timed runs per model (b1 + b32)
    batch_large: int = Field(32, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # torch intra-op threads for every measurement (None: torch's default, one per core).
    # On a shared, oversubscribed machine 1 thread avoids OpenMP spin-waits between cores.
    threads: int | None = Field(None, ge=1)
    # Training to target on the embedded dataset.
    train: bool = True
    data_root: str | None = None  # a synthetic dataset; None: synthesize one under the output
    synth_num_train: int = Field(320, ge=8)
    synth_num_val: int = Field(80, ge=4)
    classification_image_size: int = Field(64, ge=32)
    detection_image_size: int = Field(96, ge=32)
    batch_size: int = Field(16, ge=1)
    augment_passes: int = Field(3, ge=1)  # distinct augmented passes, replayed cyclically
    max_epochs: int = Field(30, ge=1)
    time_budget_s: float = Field(150.0, gt=0)  # per model, optimizer-step seconds
    target_top1: float = Field(0.9, ge=0, le=1)
    target_map50: float = Field(0.5, ge=0, le=1)
    seed: int = 0

    @classmethod
    def quick(cls, **overrides) -> "ReportConfig":
        """Test-sized: tiny models only, one short epoch each, brief timings (< 1 min)."""
        settings = dict(cost_models="tiny", cost_budget_s=0.3, batch_large=32, synth_num_train=48,
                        synth_num_val=16, augment_passes=1, max_epochs=1, time_budget_s=20.0,
                        threads=1)
        settings.update(overrides)
        return cls(**settings)
