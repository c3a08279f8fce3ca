"""``detect_bccd.yaml`` builds a model that takes the patches its data section makes."""

from __future__ import annotations

from pathlib import Path

from components.tasks import get_task
from components.training.config import load_train_config

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def test_the_bccd_detector_reads_the_data_sections_patch_size():
    cfg = load_train_config(CONFIGS / "detect_bccd.yaml", [])
    model = get_task(cfg.task).build_model(cfg, num_classes=3, image_size=cfg.data.image_size)
    # the model rejects patches of any other size at its first forward (normalize_patches)
    assert int(model.patch_size) == cfg.data.patch_size


def test_the_bccd_yolos_takes_every_weight_of_the_bccd_mae_encoder():
    """``pretrain_mae_bccd.yaml``'s encoder initialises ``detect_bccd_yolos.yaml``'s YOLOS-Ti:
    every block weight arrives unchanged, the 14x14 position embeddings resized to the
    detector's grid; only the [DET] tokens and the heads stay new."""
    import torch

    mae_cfg = load_train_config(CONFIGS / "pretrain_mae_bccd.yaml", [])
    det_cfg = load_train_config(CONFIGS / "detect_bccd_yolos.yaml", [])
    assert mae_cfg.data.split_paths("train").image_set.endswith("trainval.txt")  # no test photo
    mae_task, det_task = get_task(mae_cfg.task), get_task(det_cfg.task)
    torch.manual_seed(0)
    mae = mae_task.build_model(mae_cfg, num_classes=0, image_size=mae_cfg.data.image_size)
    encoder = mae_task.checkpoint_weights(mae)  # what the MAE checkpoint holds
    detector = det_task.build_model(det_cfg, num_classes=3, image_size=det_cfg.data.image_size,
                                    init_state=encoder, init_meta={})
    state = detector.state_dict()
    blocks = [k for k in encoder if ".blocks." in k]
    assert blocks and all(torch.equal(state[k], encoder[k]) for k in blocks)
    assert torch.equal(state["backbone.patch_embed.proj.weight"], encoder["backbone.patch_embed.proj.weight"])
    grid = det_cfg.data.image_size // det_cfg.data.patch_size
    assert encoder["backbone.pos_embed"].shape[1] == 1 + 14 * 14
    assert state["backbone.pos_embed"].shape[1] == 1 + grid * grid


def test_the_bccd_lwdetr_takes_every_block_of_the_bccd_mae_encoder():
    """``pretrain_mae_bccd.yaml``'s encoder initialises ``detect_bccd_lwdetr.yaml``'s backbone:
    each block's q/k/v are the rows of the encoder's packed qkv, its MLP and norms arrive
    unchanged, and the driver-side weight check finds nothing wrong."""
    import torch

    from components.training.trainer import check_init_weights

    mae_cfg = load_train_config(CONFIGS / "pretrain_mae_bccd.yaml", [])
    det_cfg = load_train_config(CONFIGS / "detect_bccd_lwdetr.yaml", [])
    mae_task, det_task = get_task(mae_cfg.task), get_task(det_cfg.task)
    torch.manual_seed(0)
    encoder = mae_task.checkpoint_weights(mae_task.build_model(mae_cfg, num_classes=0,
                                                               image_size=mae_cfg.data.image_size))
    check_init_weights(det_cfg, encoder, {}, num_classes=3, image_size=det_cfg.data.image_size)
    detector = det_task.build_model(det_cfg, num_classes=3, image_size=det_cfg.data.image_size,
                                    init_state=encoder, init_meta={})
    state = detector.state_dict()
    layer = "hf.model.backbone.backbone.encoder.layer"
    for i in range(12):
        q, k, v = encoder[f"backbone.blocks.{i}.attn.qkv.weight"].chunk(3)
        assert torch.equal(state[f"{layer}.{i}.attention.q_proj.weight"], q)
        assert torch.equal(state[f"{layer}.{i}.attention.k_proj.weight"], k)
        assert torch.equal(state[f"{layer}.{i}.attention.v_proj.weight"], v)
        assert torch.equal(state[f"{layer}.{i}.intermediate.fc2.weight"], encoder[f"backbone.blocks.{i}.mlp.fc2.weight"])
        assert torch.equal(state[f"{layer}.{i}.layernorm_before.bias"], encoder[f"backbone.blocks.{i}.norm1.bias"])
        assert torch.equal(state[f"{layer}.{i}.gamma_1"], torch.ones(192))  # timm's ViT-Ti has no layer scale
