"""Masked-autoencoder pretraining of a ViT encoder (labels unused): the masked-patch
reconstruction loss; the checkpoint is the encoder as a classifier with no classes (the
decoder beside it for resuming), to fine-tune or to start a detector from."""

from __future__ import annotations

import os
from typing import Any

import torch

from components.core.config import ConfigError
from components.tasks.base import Task, check_overrides
from components.tasks.losses import LossFn, mae_loss

MAE_DECODER_FILE = "mae_decoder.safetensors"


class MaeTask(Task):
    name = "mae"
    model_task = "classification"
    batch_kind = None  # either data format, labels ignored
    metric, direction = "val_loss", "min"
    registers = False

    def check_config(self, cfg) -> None:
        if cfg.model.init_from:
            raise ValueError("task 'mae' trains an encoder from scratch: model.init_from is not supported")

    def checkpoint_ranking(self, metric, mode):
        return "val_loss", "min"  # the masked-patch reconstruction loss: lower is better

    def check_model(self, cfg) -> None:
        from components.models import get_spec

        try:
            spec = get_spec(cfg.model.name)
        except KeyError as err:
            raise ConfigError(f"model.name: {err.args[0]}") from None
        if spec.task != "classification" or spec.family != "vit":
            raise ConfigError(f"task 'mae' needs a ViT-family encoder (e.g. vit_demo, deit_demo, "
                              f"vit_small_patch16_224); {cfg.model.name!r} is a {spec.family} {spec.task} model")
        check_overrides(cfg.model.name, cfg.model.overrides)

    def loader_kind(self, data_format: str | None):
        from components.data.config import FORMAT_TASK

        return FORMAT_TASK.get(data_format or "", "classification")

    def build_model(self, cfg, *, num_classes, image_size, init_state=None, init_meta=None):
        """A fresh ViT encoder inside the masked autoencoder."""
        from components.models.mae import build_mae

        return build_mae(cfg.model.name, img_size=image_size, head=cfg.model.head,
                         overrides=dict(cfg.model.overrides), **cfg.mae.model_dump(), eval_seed=cfg.run.seed)

    def loss(self, cfg, *, num_classes, model=None) -> LossFn:
        return mae_loss()

    def checkpoint_weights(self, model):
        return model.encoder.state_dict()

    def save_extra_weights(self, directory: str, model) -> None:
        from safetensors.torch import save_file

        save_file({k: v.detach().cpu().contiguous() for k, v in model.decoder_state_dict().items()},
                  os.path.join(directory, MAE_DECODER_FILE))

    def restore_weights(self, model, state_dict: dict[str, torch.Tensor], directory: str) -> None:
        from safetensors.torch import load_file

        model.encoder.load_state_dict(state_dict)
        missing, unexpected = model.load_state_dict(load_file(os.path.join(directory, MAE_DECODER_FILE)),
                                                    strict=False)
        missing = [k for k in missing if not k.startswith("encoder.")]
        if missing or unexpected:
            raise RuntimeError(f"MAE decoder state does not fit: missing {missing[:5]}, unexpected {unexpected[:5]}")

    def checkpoint_classes(self, class_names):
        return []  # the encoder as a classifier with no classes (head unused)

    def checkpoint_extra(self, cfg) -> dict[str, Any]:
        return {"objective": "mae", "mae": cfg.mae.model_dump(), "decoder_file": MAE_DECODER_FILE}

    @property
    def evaluates(self) -> bool:
        return False

    def postprocess(self, outputs, **kwargs):
        raise NotImplementedError("task 'mae' trains an encoder to fine-tune: nothing to serve")

    def output_specs(self, **kwargs):
        raise NotImplementedError("task 'mae' trains an encoder to fine-tune: nothing to serve")

    def evaluate(self, model, batches, **kwargs) -> dict[str, Any]:
        raise NotImplementedError("task 'mae' has no final evaluation: its best val_loss is the report")
