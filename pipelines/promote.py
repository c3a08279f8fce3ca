"""Promotion gate: ``python -m pipelines.promote --config pipelines/configs/promote.yaml [k=v ...]``.

Re-measures the candidate version and the current ``@champion`` on the same validation data
and moves ``@champion`` only when the candidate wins by the configured margin (otherwise
``@challenger``); see :mod:`components.tracking.promotion`. Prints the decision; with
``--out`` also writes the comparison JSON there. Exit code 2 on a bad request (unknown
model or version, missing artifacts, a model of another task): no alias moves then.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from components.tracking.promotion import PromoteConfig, PromotionResult


def gate(cfg: PromoteConfig) -> PromotionResult:
    """The promotion stage: re-measure candidate and champion, move the alias; the decision."""
    from components.tracking.promotion import promote

    with contextlib.redirect_stdout(sys.stderr):  # MLflow's run links: not the answer
        return promote(cfg)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.promote", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="pipelines/configs/promote.yaml")
    parser.add_argument("--out", default=None, help="also write the comparison JSON here")
    parser.add_argument("overrides", nargs="*", help="key.sub=value")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")

    from components.cli.registry import describe
    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError, load_config
    from components.data.errors import DataError
    from components.tracking.promotion import PromoteConfig, write_comparison
    from components.tracking.registry import RegistryError

    try:
        cfg = load_config(PromoteConfig, args.config, args.overrides)
        result = gate(cfg)
    except (ConfigError, RegistryError, CheckpointError, DataError) as err:
        print(f"promote: error: {err}", file=sys.stderr)
        return 2
    print(describe(result))
    if args.out:
        print(f"comparison: {write_comparison(result, args.out)}")
    else:
        print(json.dumps({k: v for k, v in result.to_dict().items()
                          if not k.endswith("_metrics")}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
