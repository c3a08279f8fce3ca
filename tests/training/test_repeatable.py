"""A seeded run is repeatable: the same config trains to the same weights, bit for bit.

The data arrive in many small blocks (``rows_per_block=2``) whose map tasks run in
parallel and finish in any order; Ray Train replaces each dataset's execution options with
its own when it splits the data for the workers, so unless ``data.preserve_order`` reaches
it too (``trainer.ingest_options``), the worker sees the rows in completion order and two
runs of one config train on different batches.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from components.core.checkpoint import WEIGHTS_FILE
from components.training.config import load_train_config
from components.training.trainer import run_training

CONFIGS = Path(__file__).resolve().parents[2] / "pipelines" / "configs"


@pytest.mark.slow
def test_two_runs_of_one_seeded_config_end_with_identical_weights(ray_cluster, synth_dataset, storage_dir):
    def train(name: str) -> dict[str, torch.Tensor]:
        cfg = load_train_config(CONFIGS / "pretrain_ci.yaml", [
            f"data.root={synth_dataset}", f"run.storage_path={storage_dir}", f"run.name={name}",
            "data.rows_per_block=2", "epochs=1", "precision=fp32", "scaling.torch_threads=1"])
        summary = run_training(cfg)
        assert summary["steps"] >= 5
        return load_file(str(Path(summary["checkpoint"]) / WEIGHTS_FILE))

    first, second = train("repeat-a"), train("repeat-b")
    assert first.keys() == second.keys()
    differing = [k for k in first if not torch.equal(first[k], second[k])]
    assert differing == [], f"{len(differing)} of {len(first)} tensors differ, e.g. {differing[:3]}"
