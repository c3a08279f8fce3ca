"""Masked-autoencoder pretraining (``task: mae``): the mask really hides patches, the loss
counts hidden patches only, a tiny run through Ray Train lowers the loss, and the saved
encoder initialises fine-tuning (every encoder weight, only the head new) and YOLOS."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from components.core.checkpoint import load_checkpoint, read_meta
from components.core.config import ConfigError
from components.models.mae import MaeConfigError, build_mae, masked_patch_loss
from components.training.config import load_train_config
from components.tasks import get_task
from components.tasks.mae import MAE_DECODER_FILE
from components.training.trainer import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"
P, GRID = 16, (4, 4)  # 64 px images, 16 patches


def _patches(batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, GRID[0] * GRID[1], P * P * 3), generator=g, dtype=torch.uint8)


def test_encoder_sees_only_the_visible_patches():
    mae = build_mae("vit_demo", img_size=64, mask_ratio=0.75, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    seen = []
    mae.encoder.backbone.blocks[0].register_forward_hook(lambda m, args, out: seen.append(args[0].shape))
    patches = _patches()
    out = mae(patches, GRID, generator=torch.Generator().manual_seed(1))
    n = GRID[0] * GRID[1]
    keep = int(n * (1 - 0.75))
    assert seen == [torch.Size([2, 1 + keep, 96])]  # [CLS] + N*(1-ratio) patch tokens
    mask = out["mask"]
    assert mask.shape == (2, n) and mask.sum(1).tolist() == [n - keep] * 2

    # Changing the pixels of hidden patches changes nothing the encoder computes.
    from components.models.mae import random_masking

    ids_keep, _, mask2 = random_masking(2, n, 0.75, device=torch.device("cpu"),
                                        generator=torch.Generator().manual_seed(1))
    assert torch.equal(mask, mask2)
    altered = patches.clone()
    altered[mask.bool()] = 255 - altered[mask.bool()]
    mae.eval()
    with torch.no_grad():
        enc_a = mae.encode(mae.encoder.normalize_patches(patches, GRID), ids_keep)
        enc_b = mae.encode(mae.encoder.normalize_patches(altered, GRID), ids_keep)
    assert torch.equal(enc_a, enc_b)


def test_loss_counts_only_hidden_patches():
    target = torch.randn(2, 16, 12)
    mask = torch.zeros(2, 16)
    mask[:, :12] = 1  # 12 hidden, 4 visible per image
    pred = target.clone()
    pred[:, 12:] += 100.0  # garbage on visible patches: no loss
    assert masked_patch_loss(pred, target, mask).item() == 0.0
    pred[0, 0] += 2.0  # one hidden patch off by 2 everywhere: (2^2) / 24 hidden patches
    assert masked_patch_loss(pred, target, mask).item() == pytest.approx(4.0 / 24)

    # The model's loss is that masked loss of its own prediction against its own targets.
    mae = build_mae("vit_demo", img_size=64, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    patches = _patches()
    out = mae(patches, GRID, generator=torch.Generator().manual_seed(3))
    expected = masked_patch_loss(out["pred"], mae.targets(patches), out["mask"])
    assert out["loss_recon"].item() == pytest.approx(expected.item())
    full = ((out["pred"] - mae.targets(patches)) ** 2).mean()
    assert out["loss_recon"].item() != pytest.approx(full.item(), rel=1e-6)
    # norm_pix_loss targets: per patch mean 0, variance 1
    t = mae.targets(patches)
    assert t.mean(-1).abs().max() < 1e-4 and (t.var(-1) - 1).abs().max() < 1e-2


def test_mae_config_is_validated():
    with pytest.raises(ConfigError, match="ViT-family encoder"):
        load_train_config(CONFIGS / "pretrain_mae_ci.yaml", ["model.name=resnet_demo"])
    with pytest.raises(ConfigError, match=r"mae\.mask_ratio"):
        load_train_config(CONFIGS / "pretrain_mae_ci.yaml", ["mae.mask_ratio=1.0"])
    with pytest.raises(ConfigError, match="init_from"):
        load_train_config(CONFIGS / "pretrain_mae_ci.yaml", ["model.init_from=/tmp/x"])
    with pytest.raises(MaeConfigError, match="ViT-family"):
        from components.models import build_model
        from components.models.mae import MaskedAutoencoder

        MaskedAutoencoder(build_model("hybrid_demo", num_classes=0, img_size=64))
    cfg = load_train_config(CONFIGS / "pretrain_mae.yaml")
    assert (cfg.task, cfg.checkpoint.metric, cfg.checkpoint.mode, cfg.mae.mask_ratio) == ("mae", "val_loss", "min", 0.75)


@pytest.mark.slow
def test_mae_pretraining_through_ray_train_lowers_the_loss(mae_sigterm_run):
    # The session's tiny MAE run (conftest.py): 45 steps on Ray Train, stopped by a SIGTERM
    # at step ~3 and resumed (test_sigterm.py checks that part).
    summary, uri = mae_sigterm_run["summary"], mae_sigterm_run["tracking_uri"]
    assert summary["task"] == "mae" and summary["registered_version"] is None  # nothing to serve
    history = sorted(MlflowClient(uri).get_metric_history(summary["mlflow_run_id"], "train_loss"),
                     key=lambda m: m.step)
    losses = [m.value for m in history]
    assert len(losses) == summary["steps"] == 45, losses  # every step, once (across the stop)
    early, late = sum(losses[:3]) / 3, sum(losses[-5:]) / 5
    # Measured here (window means): ~1.3 at the start → ~0.91 at the end. It falls, and below
    # 1.0: with per-patch normalised targets a flat (all-mean) prediction scores ~1.0.
    assert late < 0.85 * early and late < 1.0, losses
    val = [m.value for m in MlflowClient(uri).get_metric_history(summary["mlflow_run_id"], "val_loss")]
    assert len(val) == 3 and min(val) == pytest.approx(summary["metrics"]["val_loss"])

    # The checkpoint: the encoder in the classifier contract, the decoder beside it.
    ckpt = Path(summary["checkpoint"])
    meta = read_meta(ckpt)
    assert (meta.model_name, meta.task, meta.class_names) == ("vit_demo", "classification", [])
    assert meta.extra["objective"] == "mae" and meta.extra["mae"]["mask_ratio"] == 0.75
    state, _ = load_checkpoint(ckpt)
    assert all(k.startswith(("backbone.", "head.")) for k in state)
    assert (ckpt / MAE_DECODER_FILE).is_file()


@pytest.mark.slow
def test_finetune_and_yolos_start_from_the_mae_encoder(mae_sigterm_run, synth_dataset, tmp_path):
    summary = mae_sigterm_run["summary"]
    ckpt = summary["checkpoint"]
    state, meta = load_checkpoint(ckpt)
    from dataclasses import asdict

    overrides = [f"data.root={synth_dataset}", f"run.storage_path={tmp_path}", "run.name=ft-from-mae",
                 f"model.init_from={ckpt}", "model.head=linear", "max_steps=6", "epochs=1"]
    cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", overrides)
    model = get_task(cfg.task).build_model(cfg, num_classes=5, image_size=64, init_state=state, init_meta=asdict(meta))
    own = model.state_dict()
    encoder_keys = [k for k in state if k.startswith("backbone.")]
    assert encoder_keys and all(torch.equal(own[k], state[k]) for k in encoder_keys)  # every encoder weight
    assert {k for k in own if k not in state} <= {k for k in own if k.startswith("head.")}  # only the head new
    assert model.head.fc.out_features == 5

    from components.models import build_model
    from components.models.yolos import init_from_classifier

    detector = build_model("yolos_demo", num_classes=3, img_size=64)
    left = init_from_classifier(detector, state)
    assert not any(k.startswith("backbone.blocks.") for k in left)

    # and it trains: a short fine-tuning run through Ray Train from the MAE checkpoint
    ft = run_training(cfg)
    assert ft["steps"] == 6 and 0.0 <= ft["metrics"]["top1"] <= 1.0
    assert read_meta(ft["checkpoint"]).step == 6


def test_mae_checkpoint_round_trip_restores_encoder_and_decoder(tmp_path):
    """What the loop saves for an MAE (encoder in the contract + decoder file) restores the
    whole autoencoder, so a stopped/restarted MAE pretraining resumes with its decoder."""
    from components.core.checkpoint import CheckpointMeta, save_checkpoint
    task = get_task("mae")

    kwargs = dict(img_size=64, decoder_dim=32, decoder_depth=1, decoder_heads=2)
    torch.manual_seed(0)
    saved = build_mae("vit_demo", **kwargs)
    torch.manual_seed(1)
    fresh = build_mae("vit_demo", **kwargs)
    meta = CheckpointMeta(model_name="vit_demo", task="classification", model_config=saved.build_config,
                          class_names=[], image_size=64, patch_size=16, mean=saved.mean, std=saved.std,
                          data_fingerprint="", step=3, metrics={}, extra={"objective": "mae"})
    save_checkpoint(tmp_path, task.checkpoint_weights(saved), meta)
    task.save_extra_weights(str(tmp_path), saved)
    state, _ = load_checkpoint(tmp_path)
    task.restore_weights(fresh, state, str(tmp_path))
    a, b = saved.state_dict(), fresh.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
