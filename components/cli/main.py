"""``vitpipe``: one console script, a subcommand group per stage.

Each group lives in ``components/cli/<group>.py`` and exposes ``register(subparsers)``;
handlers import heavy libraries (torch, Ray, MLflow) only when they run, so ``vitpipe
--help`` stays fast. A handler signals a user mistake by raising :class:`UserError` (or a
``ConfigError`` / ``CheckpointError`` / ``DataError``): one line on stderr and exit code 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# One line per group; a module per group keeps the stages' commands apart.
GROUPS = (
    "data",
    "models",
    "explain",
    "registry",
    "serve",
    "preflight",
    "report",
    "export",
)


class UserError(Exception):
    """A mistake the user can fix (bad path, malformed file, unknown name): exit code 2."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitpipe",
        description="Ray-distributed dataset-to-model pipeline for vision transformers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")
    for name in GROUPS:
        importlib.import_module(f"components.cli.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from components.core.checkpoint import CheckpointError
    from components.core.config import ConfigError
    from components.data.errors import DataError

    try:
        return int(args.handler(args) or 0)
    except (UserError, ConfigError, CheckpointError, DataError) as err:
        print(f"vitpipe: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("vitpipe: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    # Run through the package's module, not this ``__main__`` copy, so that ``UserError``
    # raised by handlers is the class caught above (``python -m components.cli.main``).
    from components.cli.main import main as package_main

    sys.exit(package_main())
