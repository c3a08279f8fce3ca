"""Model set-up for fine-tuning and detection: pretrained weights really arrive, position
embeddings follow the new resolution, the head is fresh, and the checkpoint's model_config
rebuilds the fine-tuned architecture (what registry and serving do)."""

from __future__ import annotations

import torch

from components.models import build_model
from components.training.config import TrainConfig
from components.tasks import get_task

DATA = {"root": "unused"}  # model building reads no data


def _pretrained():
    torch.manual_seed(1)
    model = build_model("vit_demo", num_classes=5, img_size=64, head="mlp")
    return model.state_dict(), {"model_config": dict(model.build_config)}


def test_finetune_at_higher_resolution_with_a_linear_head():
    state, meta = _pretrained()
    cfg = TrainConfig.model_validate({"data": DATA, "model": {"name": "vit_demo", "head": "linear", "init_from": "x"}})
    model = get_task(cfg.task).build_model(cfg, num_classes=3, image_size=96, init_state=state, init_meta=meta)
    own = model.state_dict()
    block = "backbone.blocks.0.attn.qkv.weight"
    torch.testing.assert_close(own[block], state[block])  # backbone weights arrived
    assert own["backbone.pos_embed"].shape[1] == 1 + 36  # 96/16 = 6×6 grid (+cls), was 4×4
    logits = model(torch.randint(0, 256, (2, 36, 768), dtype=torch.uint8), (6, 6))
    assert logits.shape == (2, 3)
    rebuilt = build_model("vit_demo", **model.build_config)  # what a checkpoint's meta rebuilds
    assert rebuilt.load_state_dict(own, strict=True)


def test_yolos_backbone_initialised_from_a_vit_checkpoint():
    state, meta = _pretrained()
    cfg = TrainConfig.model_validate({"data": DATA, "task": "detection", "model": {"name": "yolos_demo", "init_from": "x"}})
    model = get_task(cfg.task).build_model(cfg, num_classes=5, image_size=64, init_state=state, init_meta=meta)
    own = model.state_dict()
    shared = [k for k in state if k.startswith("backbone.blocks.") and k in own]
    assert shared, "the detector shares no backbone keys with the classifier"
    for key in shared:
        torch.testing.assert_close(own[key], state[key])


def test_conv_stem_travels_from_pretraining_to_fine_tuning_and_yolos():
    torch.manual_seed(1)
    vit = build_model("vit_demo", num_classes=5, img_size=64, head="mlp", stem="conv")
    state, meta = vit.state_dict(), {"model_config": dict(vit.build_config)}
    stem_conv = "backbone.patch_embed.backbone.0.weight"
    finetune = TrainConfig.model_validate({"data": DATA, "model": {"name": "vit_demo", "head": "linear", "init_from": "x"}})
    model = get_task(finetune.task).build_model(finetune, num_classes=3, image_size=96, init_state=state, init_meta=meta)
    assert model.build_config["stem"] == "conv"
    torch.testing.assert_close(model.state_dict()[stem_conv], state[stem_conv])
    # YOLOS takes the ViT's stem without being told (the weights would not fit another stem).
    detect = TrainConfig.model_validate({"data": DATA, "task": "detection", "model": {"name": "yolos_demo", "init_from": "x"}})
    detector = get_task(detect.task).build_model(detect, num_classes=5, image_size=96, init_state=state, init_meta=meta)
    assert detector.build_config["stem"] == "conv"
    torch.testing.assert_close(detector.state_dict()[stem_conv], state[stem_conv])
