"""The driver's progress line: throughput from the workers' clocks, an ETA that holds steady."""

from __future__ import annotations

from components.training.progress import ProgressCallback, format_eta


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
