"""Offline batch inference: ``python -m pipelines.predict --config pipelines/configs/predict.yaml [k=v ...]``.

Reads a folder, an object-store prefix or a labelled split, runs a registered model
(``models:/NAME@ALIAS``, ``models:/NAME/VERSION``) or a checkpoint directory over it in a
Ray Data pipeline (decode tasks, then an actor pool of model replicas) and writes
``predictions.parquet``, ``skipped.json`` and, for detectors, ``coco_results.json`` (plus
``metrics.json`` when the input has ground truth) to ``output``. The last stdout line is
one JSON summary. A config, data, checkpoint or registry mistake is one line on stderr and
exit code 2. See docs/predict.md.
"""

from __future__ import annotations

import argparse
import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from components.predict.config import describe_fields

    parser = argparse.ArgumentParser(
        prog="python -m pipelines.predict", formatter_class=argparse.RawDescriptionHelpFormatter,
        description=__doc__, epilog="config keys (override any as key.sub=value):\n"
        + "\n".join(describe_fields()))
    parser.add_argument("--config", default="pipelines/configs/predict.yaml",
                        help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError, load_config
    from components.data.errors import DataError
    from components.predict.config import PredictConfig
    from components.predict.run import run_predict
    from components.tracking.registry import RegistryError

    try:
        summary = run_predict(load_config(PredictConfig, args.config, args.overrides))
    except (ConfigError, CheckpointError, DataError, RegistryError) as err:
        print(f"predict: error: {err}", file=sys.stderr)
        return 2
    print(summary.line(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
