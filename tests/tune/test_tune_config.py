"""The search section is validated before Ray starts: each domain's choices (or bounds) are
applied to the base training config, so an unknown key or a value the training config
rejects is one ConfigError naming it; the CLI says it in one line and exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from components.core.config import ConfigError
from components.tune.config import default_objective, load_tune_config
from components.tune.driver import default_concurrency

REPO = Path(__file__).resolve().parents[2]
CI = REPO / "pipelines" / "configs" / "tune_ci.yaml"
YOLOS = REPO / "pipelines" / "configs" / "tune_yolos.yaml"


def test_shipped_configs_load_with_the_tasks_objective():
    ci = load_tune_config(CI)
    assert ci.objective() == default_objective("classification") == ("val_top1", "max")
    yolos = load_tune_config(YOLOS)
    assert yolos.objective() == ("val_loss", "min") == default_objective("detection")
    assert set(yolos.search.space) == {"optim.lr", "criterion.eos_coef", "optim.clip_grad_norm",
                                       "model.overrides.num_det_tokens"}
    # a domain given as a nested override lands on the same dotted key
    nested = load_tune_config(CI, ["search.space.optim.lr={choice: [1.0e-3, 2.0e-3]}"])
    assert nested.search.space["optim.lr"].candidates() == [1e-3, 2e-3]


@pytest.mark.parametrize("override, message", [
    ("search.space.optim.lrr={choice: [0.1]}", "search.space.optim.lrr = 0.1 (choice(0.1)): optim.lrr: Extra inputs"),
    ("search.space.optim.lr={loguniform: [-1.0, 0.1]}", "loguniform needs low > 0"),
    ("search.space.optim.clip_grad_norm={uniform: [-1.0, 1.0]}", "search.space.optim.clip_grad_norm = -1.0"),
    ("search.space.batch_size={randint: [0, 8]}", "search.space.batch_size = 0 (randint(0, 8))"),
    ("search.space.model.overrides.no_such_arg={choice: [1]}", "unexpected keyword argument 'no_such_arg'"),
    ("search.space.model.name={choice: [vit_demo, yolos_demo]}", "'yolos_demo' is a detection model"),
    ("search.space.data.image_size={choice: [64, 70]}", "image_size 70 must be a multiple of patch_size 16"),
    ("search.space.run.name={choice: [a, b]}", "set by the search, not searched over"),
    ("search.space.optim.lr={choice: []}", "choice needs at least one value"),
    ("search.space.optim.lr={choice: [0.1], uniform: [0.1, 0.2]}", "give exactly one of"),
    ("search.metric=val_map", "'val_map' is not reported by classification training"),
    ("search.scheduler={grace_period: 1, max_t: 5}", "max_t (5) is below max_steps (12)"),
    ("search.scheduler.max_t=5", "grace_period (12) exceeds max_t (5)"),
])
def test_bad_search_is_one_config_error(override, message):
    with pytest.raises(ConfigError) as err:
        load_tune_config(CI, [override])
    assert message in str(err.value)


def test_cli_bad_search_is_one_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "pipelines.tune", "--config", str(CI),
                           "search.space.optim.lrr={choice: [0.1]}"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("tune: error: search.space.optim.lrr = 0.1")
    help_text = subprocess.run([sys.executable, "-m", "pipelines.tune", "--help"], cwd=REPO,
                               capture_output=True, text=True, timeout=60).stdout
    assert "loguniform" in help_text and "max_concurrent_trials" in help_text


def test_concurrency_default_fits_the_cluster():
    cfg = load_tune_config(CI)  # 1 worker x 1 CPU + 1 data CPU + 0.1 for the trial itself
    assert default_concurrency(cfg, {"CPU": 4.0}) == 1
    assert default_concurrency(cfg, {"CPU": 16.0}) == 7
    assert default_concurrency(cfg, {"CPU": 1.0}) == 1  # never 0
    gpu = load_tune_config(CI, ["scaling.use_gpu=true", "scaling.num_workers=2"])
    assert default_concurrency(gpu, {"CPU": 64.0, "GPU": 4.0}) == 2
