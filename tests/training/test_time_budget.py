"""``run.max_seconds``: a run stops at the first optimizer step after its time budget, with
fewer steps than its epochs would give, and still finishes: final checkpoint (recording the
seconds of fitting), final evaluation; its learning rate has followed the budget's clock down
the cosine to its floor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from components.core.checkpoint import read_meta
from components.training.config import load_train_config
from components.training.optim import lr_factor
from components.training.state import STATE_FILE, read_progress
from components.training.trainer import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


def test_max_seconds_must_be_positive():
    from components.core.config import ConfigError

    with pytest.raises(ConfigError):
        load_train_config(CONFIGS / "pretrain_ci.yaml", ["run.max_seconds=0"])


@pytest.mark.slow
def test_time_budget_stops_early_and_still_writes_the_final_checkpoint(ray_cluster, synth_dataset, storage_dir):
    epochs = 2000  # far more steps than 3 s allow: the steps alone would keep the lr near its peak
    cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", [
        f"data.root={synth_dataset}", f"run.storage_path={storage_dir}", "run.name=time-budget",
        f"epochs={epochs}", "run.max_seconds=3", "scaling.torch_threads=1", "checkpoint.keep_best_k=1000"])
    summary = run_training(cfg)

    planned = epochs * (48 // 8)  # 48 synthetic training images, batch 8
    assert 1 <= summary["steps"] < planned, summary
    final = sorted((storage_dir / "time-budget").glob("checkpoint_step*_epoch*"))  # by step
    assert final, "no end-of-run checkpoint"
    last = final[-1]
    progress = read_progress(last)
    assert progress.global_step == summary["steps"]
    assert progress.train_seconds >= 3.0  # stopped at the first step past the budget...
    assert progress.train_seconds < 3.0 + 30  # ...not at the end of the epochs
    assert read_meta(last).extra["train_seconds"] == pytest.approx(progress.train_seconds, abs=1e-2)
    assert "top1" in summary["metrics"]  # the final evaluation ran
    # The cosine followed the seconds, not the planned steps: the lr after the step that spent
    # the budget is the floor (the clock is read before the scheduler computes it).
    assert progress.global_step > cfg.optim.warmup_steps
    sched = json.loads((last / STATE_FILE).read_text())["scheduler"]
    reached = sched["_last_lr"][0] / sched["base_lrs"][0]
    by_steps = lr_factor(progress.global_step, total_steps=planned, warmup_steps=cfg.optim.warmup_steps,
                         schedule="cosine", min_lr_ratio=cfg.optim.min_lr_ratio)
    assert by_steps > 0.9, (by_steps, progress.global_step)
    assert reached == pytest.approx(cfg.optim.min_lr_ratio, abs=1e-6), (reached, progress.global_step)
