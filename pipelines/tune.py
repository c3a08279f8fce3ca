"""Hyperparameter search with Ray Tune over the training pipeline.

``python -m pipelines.tune --config pipelines/configs/tune_ci.yaml [key.sub=value ...]``

The config is a training config (the base of every trial) plus a ``search`` section; each
trial is one training run (one ``TorchTrainer``), its MLflow run nested under the search's.
The last stdout line is one JSON object (trials, best trial, registered version). Running
the same command again (same ``run.name`` and ``run.storage_path``) resumes the search.
A config or user mistake is one line on stderr and exit code 2; a search in which no
trial trained to its end exits 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).with_name("configs") / "tune_ci.yaml"

EPILOG = """\
the search section (see docs/tune.md for every key and its default):
  search:
    space:                       # dotted keys of the training config, one domain each
      optim.lr: {loguniform: [1.0e-4, 3.0e-3]}
      criterion.eos_coef: {choice: [0.05, 0.1]}
      model.overrides.num_det_tokens: {randint: [5, 20]}   # both ends included
    num_samples: 4               # trials
    metric: null                 # default: val_top1 (max) for classifiers, val_loss (min) otherwise
    mode: null
    scheduler: {enabled: true, grace_period: 1, reduction_factor: 2, max_t: null}  # ASHA, in steps
    max_concurrent_trials: null  # default: cluster CPUs // (workers x cpus_per_worker + data_cpus + driver_cpus)

examples:
  python -m pipelines.tune --config pipelines/configs/tune_ci.yaml data.root=.demo/synth
  python -m pipelines.tune --config pipelines/configs/tune_yolos.yaml search.num_samples=8 \\
      'search.space.optim.lr={loguniform: [5.0e-4, 2.0e-3]}'

The best finished trial's checkpoint is registered (registry.enabled) with its sampled
values as version tags; no alias is moved (promote it with python -m pipelines.promote).
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.tune", epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="vitpipe tune: Ray Tune hyperparameter search over the training pipeline "
                    "(one TorchTrainer per trial, ASHA early stopping, MLflow parent + child runs, "
                    "the best trial registered; rerun the same command to resume)")
    parser.add_argument("--config", default=str(DEFAULT_CONFIG), help="tune YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides (search.* included)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError
    from components.data.errors import DataError
    from components.tracking.registry import RegistryError
    from components.training.storage import StorageError
    from components.training.tracking import TrackingError
    from components.tune.config import load_tune_config

    try:
        cfg = load_tune_config(args.config, args.overrides)
        from components.tune.driver import TuneError, run_tune

        try:
            summary = run_tune(cfg)
        except TuneError as err:
            print(f"tune: {err}", file=sys.stderr)
            return 1
    except (ConfigError, CheckpointError, DataError, RegistryError, StorageError, TrackingError) as err:
        print(f"tune: error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(summary, sort_keys=True, default=str), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
