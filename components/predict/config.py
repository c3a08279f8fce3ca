"""``PredictConfig``: which model, which images, where the answers go, how the work is spread.

``python -m pipelines.predict --config pipelines/configs/predict.yaml [key.sub=value ...]``
reads a YAML file of this shape and validates it before any Ray task starts.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from components.core.config import StrictModel
from components.data.config import DataConfig

DEFAULT_MAX_PIXELS = 40_000_000


class InputConfig(StrictModel):
    """Either ``path`` (images only) or ``data`` + ``split`` (images with ground truth)."""

    path: str | None = Field(None, description=(
        "a folder of images, read recursively, or an object-store prefix (s3://bucket/dir, "
        "gs://...); files without an image extension are listed as skipped"))
    data: DataConfig | None = Field(None, description=(
        "a labelled split read by the data layer (format coco | imagefolder, or any format "
        "it reads): predictions are scored with the training evaluator; image_size, "
        "patch_size and class_names are taken from the model"))
    split: str = Field("val", description="the split of `data` to predict")

    @model_validator(mode="after")
    def _one_source(self) -> "InputConfig":
        if (self.path is None) == (self.data is None):
            raise ValueError("give exactly one of input.path (images) or input.data (a split)")
        return self


class DecodeConfig(StrictModel):
    """The read/decode/resize stage: stateless Ray tasks on CPUs."""

    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per decode task")
    tasks: int | None = Field(None, ge=1, description=(
        "most decode tasks at once (null: as many as the free CPUs allow)"))
    rows_per_block: int = Field(16, ge=1, description="images per decode task (Ray Data block)")
    max_pixels: int = Field(DEFAULT_MAX_PIXELS, ge=1, description=(
        "images with more pixels are skipped, checked from the header before decoding"))
    reduced: bool = Field(True, description=(
        "decode a JPEG at the smallest 1/2, 1/4 or 1/8 scale still covering the model's "
        "input (libjpeg's reduced decode; the data layer's eval transform does the same)"))


class InferenceConfig(StrictModel):
    """The model stage: a fixed pool of actors, each holding one model replica."""

    actors: int = Field(1, ge=1, description="model replicas (Ray actors) in the pool")
    batch_size: int = Field(32, ge=1, description="images per forward pass")
    num_cpus: float = Field(1.0, gt=0, description="Ray CPUs reserved per actor")
    num_gpus: float | None = Field(None, ge=0, description=(
        "GPUs per actor; null: 1 when the cluster has GPUs, else 0"))
    threads: int | None = Field(None, ge=1, description=(
        "torch intra-op threads per actor (null: num_cpus rounded, at least 1)"))
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("fp32", description=(
        "autocast dtype; auto: bf16 on GPUs, and on a CPU where the replica's forward pass is "
        "measured faster in it, else fp32"))

    def torch_threads(self) -> int:
        return self.threads or max(1, round(self.num_cpus))


class PredictConfig(StrictModel):
    """``pipelines/configs/predict.yaml``; every field can be overridden as ``key=value``."""

    model: str = Field(description=(
        "models:/NAME@ALIAS, models:/NAME/VERSION or a local checkpoint directory "
        "(model.safetensors + vitpipe.json)"))
    input: InputConfig
    output: str = Field(description=(
        "output directory (local or object store): predictions.parquet, skipped.json and, "
        "for detectors, coco_results.json"))
    decode: DecodeConfig = Field(default_factory=DecodeConfig)
    inference: InferenceConfig = Field(default_factory=InferenceConfig)
    top_k: int = Field(5, ge=1, description="classifiers: labels kept per image")
    score_threshold: float = Field(0.0, ge=0, le=1, description=(
        "detectors: boxes scoring below this are dropped"))
    max_detections: int = Field(100, ge=1, description="detectors: boxes kept per image")
    tracking_uri: str | None = Field(None, description=(
        "MLflow server for models:/ URIs (default: MLFLOW_TRACKING_URI)"))
    cache_dir: str = Field("~/.cache/vitpipe/models", description=(
        "where registry checkpoints are downloaded, once per version and node"))


def describe_fields(cls: type[StrictModel] = PredictConfig, prefix: str = "") -> list[str]:
    """One line per config key (dotted), with its default and description, for ``--help``."""
    lines = []
    for name, field in cls.model_fields.items():
        key = f"{prefix}{name}"
        kind = field.annotation
        if isinstance(kind, type) and issubclass(kind, StrictModel) and kind is not DataConfig:
            lines.extend(describe_fields(kind, prefix=f"{key}."))
            continue
        default = "required" if field.is_required() else (
            "{}" if field.default_factory is not None else repr(field.default))
        lines.append(f"  {key} (default {default}): {field.description or ''}".rstrip(": "))
    return lines
