"""The progress line: throughput from the workers' clocks, an ETA that holds steady, drawn in
place on a terminal and as periodic lines elsewhere, from the controller to the driver."""

from __future__ import annotations

import io
import re

import pytest

from components.training.progress import (ENV_MODE, LiveProgress, ProgressCallback, ProgressState, Tick,
                                          format_eta)


def _report(step: int, at: float, **extra) -> dict:
    return {"step": step, "epoch": 0, "samples_seen": step * 64, "reported_at": at, **extra}


def test_reports_read_in_a_burst_keep_the_workers_throughput():
    cb = ProgressCallback(total_steps=1000, run_name="r")
    cb.line(_report(100, at=1000.0, img_per_s=640.0))
    # The controller reads the next two reports 0.01 s apart; the worker sent them 1 s apart.
    cb.line(_report(110, at=1001.0))
    text = cb.line(_report(120, at=1002.0, train_loss=0.5))
    assert "640.0 img/s" in text and "train_loss 0.5000" in text
    assert "ETA 1:28" in text  # 0.1 s/step since the first report x 880 steps left


def test_eta_spans_pauses_and_restarts_after_a_resume():
    cb = ProgressCallback(total_steps=400, run_name="r")
    cb.line(_report(0, at=0.0))
    cb.line(_report(100, at=10.0))
    text = cb.line(_report(200, at=40.0, val_top1=0.9))  # a 20 s validation in between
    assert "ETA 0:40" in text and "val_top1 0.9000" in text  # mean 0.2 s/step, 200 steps left
    # A restarted worker resumes from its checkpoint at step 150: the clock starts again.
    first = cb.line(_report(150, at=100.0, img_per_s=320.0))
    assert "320.0 img/s" in first and "ETA" not in first
    assert "ETA 0:24" in cb.line(_report(160, at=101.0))  # 0.1 s/step x 240


def test_format_eta():
    assert format_eta(59) == "0:59" and format_eta(3725) == "1:02:05" and format_eta(-3) == "0:00"


def test_tick_line_shows_percent_rate_eta_and_the_latest_metrics():
    state = ProgressState(total_steps=200, run_name="demo-pretrain")
    state.tick(_report(0, at=0.0, val_top1=-1e9))  # "no value yet" is not shown
    state.tick(_report(50, at=10.0, train_loss=1.5, val_top1=0.75))
    tick = state.tick(_report(100, at=20.0, train_loss=1.25))
    assert tick.step == 100 and tick.total == 200 and tick.eta_s == 20.0
    assert tick.metrics == {"train_loss": 1.25, "val_top1": 0.75}  # val_top1 kept from its report
    assert tick.line() == ("[demo-pretrain] step 100/200 (50%)  320.0 img/s  ETA 0:20  "
                           "train_loss 1.2500  val_top1 0.7500  epoch 0")


def _ticks(total: int, seconds_per_step: float) -> list[Tick]:
    state = ProgressState(total_steps=total, run_name="r")
    return [state.tick(_report(s, at=s * seconds_per_step)) for s in range(1, total + 1)]


def test_plain_mode_prints_every_tenth_or_interval_and_the_last_step():
    out = io.StringIO()
    live = LiveProgress(stream=out, mode="plain", interval_s=10.0)
    for i, tick in enumerate(_ticks(100, 0.05)):  # 5 s in all: only the 10 % marks are due
        live.show(tick, now=i * 0.05)
    steps = [int(s) for s in re.findall(r"step (\d+)/100", out.getvalue())]
    assert steps == [1, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert "\r" not in out.getvalue()

    out = io.StringIO()
    live = LiveProgress(stream=out, mode="plain", interval_s=10.0)
    for i, tick in enumerate(_ticks(1000, 1.0)):  # 1,000 s: a line every 10 s, 10 % marks between
        live.show(tick, now=float(i))
    steps = [int(s) for s in re.findall(r"step (\d+)/1000", out.getvalue())]
    assert steps[:4] == [1, 11, 21, 31] and steps[-1] == 1000 and len(steps) == 101


def test_tty_mode_redraws_one_line_per_run_in_place():
    out = io.StringIO()
    live = LiveProgress(stream=out, mode="tty")
    for tick in _ticks(3, 1.0):
        live.show(tick)
    live.say("[chain] r: done")
    text = out.getvalue()
    assert text.count("\r") == 3 and text.count("\n") == 2  # the run's line ended, then the message
    assert text.endswith("step 3/3 (100%)  64.0 img/s  ETA 0:00  epoch 0\x1b[K\n[chain] r: done\n")


def test_mode_from_the_environment(monkeypatch):
    monkeypatch.setenv(ENV_MODE, "every")
    assert LiveProgress(stream=io.StringIO()).mode == "every"
    monkeypatch.setenv(ENV_MODE, "auto")
    assert LiveProgress(stream=io.StringIO()).mode == "plain"  # not a terminal
    monkeypatch.setenv(ENV_MODE, "fancy")
    with pytest.raises(ValueError, match="VITPIPE_PROGRESS"):
        LiveProgress(stream=io.StringIO())


def test_callback_ticks_reach_the_driver_through_ray(ray_cluster):
    """The callback as Ray Train runs it: built in the driver, called in another process."""
    import ray

    out = io.StringIO()
    with LiveProgress(stream=out, mode="every") as live:
        cb = ProgressCallback(total_steps=4, run_name="remote")
        assert cb.sink is not None

        @ray.remote(num_cpus=0)
        def controller(callback, reports):  # stands where Ray Train's controller actor calls it
            for metrics in reports:
                callback.after_report(None, [metrics], None)
            return True

        reports = [_report(step, at=float(step), train_loss=1.0 / step) for step in range(1, 5)]
        assert ray.get(controller.remote(cb, reports))
        live.flush()
        live.say("[chain] remote: done")
    lines = out.getvalue().splitlines()
    assert [int(s) for s in re.findall(r"\[remote\] step (\d+)/4", out.getvalue())] == [1, 2, 3, 4]
    assert "train_loss 0.2500" in lines[3] and "64.0 img/s" in lines[3]
    assert lines[-1] == "[chain] remote: done"
    # With no display open the callback prints its line (Ray forwards it to the driver).
    assert ProgressCallback(total_steps=4, run_name="alone").sink is None
