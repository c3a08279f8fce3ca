"""Resume state without pickle; schedule and parameter groups; one step = one contract."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from components.training.config import OptimSection
from components.training.optim import (BudgetClock, build_optimizer, build_scheduler, layer_id, lr_factor,
                                       param_groups)
from components.training.state import (
    Progress, load_rng, load_train_state, save_rng, save_train_state,
)
from components.tasks.losses import classification_loss
from components.training.step import NonFiniteLossError, StepRunner


class TinyVit(nn.Module):
    """Stand-in with ViT-like parameter names, taking the batch contract's patches."""

    def __init__(self):
        super().__init__()
        self.patch_embed = nn.Linear(12, 8)
        self.pos_embed = nn.Parameter(torch.zeros(1, 4, 8))
        self.blocks = nn.ModuleList(nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 8)) for _ in range(3))
        self.head = nn.Linear(8, 3)

    def forward(self, patches, grid):
        x = self.patch_embed(patches.float() / 255) + self.pos_embed
        for block in self.blocks:
            x = x + block(x)
        return self.head(x.mean(1))


def batch(seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {"patches": torch.randint(0, 256, (6, 4, 12), generator=g, dtype=torch.uint8),
            "grid": torch.tensor([[2, 2]] * 6), "label": torch.randint(0, 3, (6,), generator=g)}


def make(cfg: OptimSection, total: int = 20):
    torch.manual_seed(0)
    model = TinyVit()
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, total)
    runner = StepRunner(model=model, optimizer=opt, scheduler=sched, loss_fn=classification_loss(),
                        device=torch.device("cpu"), grad_accum_steps=cfg.grad_accum_steps,
                        clip_grad_norm=cfg.clip_grad_norm)
    return model, opt, sched, runner


def test_resume_continues_exactly_like_an_uninterrupted_run(tmp_path):
    cfg = OptimSection(lr=1e-2, warmup_steps=3, grad_accum_steps=2, clip_grad_norm=1.0)
    model_a, _, _, run_a = make(cfg)
    for i in range(16):  # 8 optimizer steps
        run_a.micro_step(batch(i))

    model_b, opt_b, sched_b, run_b = make(cfg)
    for i in range(8):
        run_b.micro_step(batch(i))
    save_train_state(tmp_path, optimizer=opt_b, scheduler=sched_b, scaler=None,
                     progress=Progress(global_step=4, epoch=0, batch_in_epoch=8, samples_seen=48))
    weights = {k: v.clone() for k, v in model_b.state_dict().items()}

    model_c, opt_c, sched_c, run_c = make(cfg)
    model_c.load_state_dict(weights)
    progress = load_train_state(tmp_path, optimizer=opt_c, scheduler=sched_c, scaler=None)
    assert progress == Progress(4, 0, 8, 48)
    assert sched_c.last_epoch == 4 and sched_c.get_last_lr() == sched_b.get_last_lr()
    for i in range(8, 16):
        run_c.micro_step(batch(i))
    for key, value in model_a.state_dict().items():
        torch.testing.assert_close(model_c.state_dict()[key], value, rtol=0, atol=0)


def test_resume_state_is_safetensors_and_json_only(tmp_path):
    cfg = OptimSection()
    _, opt, sched, runner = make(cfg)
    runner.micro_step(batch(0))
    save_train_state(tmp_path, optimizer=opt, scheduler=sched, scaler=None, progress=Progress(1))
    save_rng(tmp_path, rank=0)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["optimizer.safetensors", "rng_rank0.json", "rng_rank0.safetensors", "train_state.json"]
    state = json.loads((tmp_path / "train_state.json").read_text())
    assert state["progress"]["global_step"] == 1
    assert len(state["optimizer"]["param_groups"]) == len(opt.param_groups)


def test_rng_round_trip(tmp_path):
    torch.manual_seed(123)
    save_rng(tmp_path, rank=3)
    expected = torch.rand(4)
    torch.manual_seed(999)
    assert load_rng(tmp_path, rank=3)
    torch.testing.assert_close(torch.rand(4), expected)
    assert not load_rng(tmp_path, rank=0)  # another rank's state is not there


def test_warmup_then_cosine_to_min():
    f = [lr_factor(s, total_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
         for s in range(101)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))  # monotone decay after warmup
    assert f[100] == pytest.approx(0.1)


def test_cosine_follows_a_time_budget_when_it_runs_out_before_the_steps():
    def f(step: int, spent: float) -> float:
        return lr_factor(step, total_steps=1000, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1,
                         budget_spent=spent)

    assert f(100, 0.0) == pytest.approx(f(100, 0.05))  # behind the steps' own progress: no effect
    assert f(100, 0.5) == pytest.approx(0.55) and f(100, 1.0) == pytest.approx(0.1)
    assert f(990, 0.5) < 0.11  # the steps run out first: they decide
    assert f(4, 0.9) == pytest.approx(0.5)  # the warmup is counted in steps
    assert lr_factor(100, total_steps=1000, warmup_steps=0, schedule="constant", min_lr_ratio=0.1,
                     budget_spent=0.9) == 1.0

    clock = BudgetClock(200.0)
    clock.update(50.0)
    assert clock.spent == 0.25
    clock.update(500.0)
    assert clock.spent == 1.0
    unboxed = BudgetClock(None)
    unboxed.update(500.0)
    assert unboxed.spent == 0.0

    model = TinyVit()
    opt = build_optimizer(model, OptimSection(lr=1e-3, warmup_steps=0, min_lr_ratio=0.0))
    clock = BudgetClock(10.0)
    sched = build_scheduler(opt, OptimSection(lr=1e-3, warmup_steps=0, min_lr_ratio=0.0), 1000, clock)
    clock.update(5.0)
    opt.step()  # no gradients: nothing moves
    sched.step()  # step 1 of 1000, half the budget spent: the cosine's midpoint
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5e-3)


def test_the_step_that_spends_the_budget_is_followed_by_the_floor_lr():
    """The fit clock is read between the optimizer step and the scheduler's: the lr after the
    step that spends the budget is already the floor, however long that step took."""
    import time

    from components.training.fit_clock import FitClock

    cfg = OptimSection(lr=1e-3, warmup_steps=0, min_lr_ratio=0.05)
    model, opt, _, _ = make(cfg)
    clock = BudgetClock(1.0)
    sched = build_scheduler(opt, cfg, 1000, clock)
    progress = Progress()
    fit = FitClock(progress, budget_s=1.0, schedule_clock=clock, rank=0, world=1, device=torch.device("cpu"))
    runner = StepRunner(model=model, optimizer=opt, scheduler=sched, loss_fn=classification_loss(),
                        device=torch.device("cpu"), on_optimizer_step=fit.tick)
    fit.start()
    runner.micro_step(batch(0))
    assert not fit.out_of_time and 0 < progress.train_seconds < 1.0
    time.sleep(1.2)
    fit.resume()  # a pause (validation, checkpoint) is not counted
    runner.micro_step(batch(1))
    assert not fit.out_of_time and progress.train_seconds < 1.0
    time.sleep(1.0)  # one long step spends the rest of the budget
    runner.micro_step(batch(2))
    assert fit.out_of_time and progress.train_seconds >= 1.0
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 1e-3 * opt.param_groups[0]["lr_scale"])


def test_layer_decay_and_no_decay_groups():
    model = TinyVit()
    groups = param_groups(model, OptimSection(layer_decay=0.5, weight_decay=0.05))
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    decay = {n: g["weight_decay"] for g in groups for n in g["names"]}
    assert scale["head.weight"] == 1.0
    assert scale["blocks.2.1.weight"] == 0.5 and scale["blocks.0.1.weight"] == 0.125
    assert scale["patch_embed.weight"] == 0.0625 == scale["pos_embed"]
    assert decay["blocks.0.1.weight"] == 0.05
    assert decay["blocks.0.1.bias"] == decay["pos_embed"] == decay["blocks.0.0.weight"] == 0.0
    assert layer_id("module.backbone.blocks.7.attn.qkv.weight", 12) == 8


def test_layer_decay_of_yolos_keeps_its_fresh_detection_parts_at_the_full_lr():
    from components.models import build_model

    model = build_model("yolos_demo", num_classes=3, img_size=64, mid_pos_embed=True)  # 4 blocks
    groups = param_groups(model, OptimSection(layer_decay=0.5))
    scale = {n: g["lr_scale"] for g in groups for n in g["names"]}
    for fresh in ("det_token", "det_pos_embed", "mid_det_pos_embed", "class_embed.layers.2.weight",
                  "bbox_embed.layers.0.weight"):
        assert scale[fresh] == 1.0, fresh
    assert scale["backbone.blocks.3.mlp.fc1.weight"] == 0.5 and scale["backbone.blocks.0.mlp.fc1.weight"] == 0.0625
    assert scale["backbone.patch_embed.proj.weight"] == 0.03125 == scale["backbone.pos_embed"]


def test_non_finite_loss_stops_with_a_clear_message():
    _, _, _, runner = make(OptimSection())
    bad = batch(0)
    runner.model.head.bias.data.fill_(float("nan"))
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* step 7"):
        runner.micro_step(bad, step=7)
