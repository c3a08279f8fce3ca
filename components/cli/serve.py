"""``vitpipe serve ...``: the Serve config file and a local server.

- ``build-config [-o PATH] [--check]``: run ``serve build`` of ``components.serving.app:app``
  and ``:colocated_app`` and write ``pipelines/configs/serve.yaml`` and
  ``serve_colocated.yaml`` (``-o``: the split config only, there; ``--check``: exit 1 if a
  file is out of date).
- ``check-config [PATH]``: validate a Serve config with Ray's ``ServeDeploySchema`` and the
  deployments' ``user_config`` with vitpipe's settings models.

To run the application: ``serve deploy pipelines/configs/serve.yaml`` on a running cluster
(``RAY_AUTH_MODE=token`` when the cluster uses token auth), or ``serve run
components.serving.app:build_app classifier_uri=models:/NAME@champion detector_uri=...``.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    serve = subparsers.add_parser("serve", help="serving: the Serve config file")
    sub = serve.add_subparsers(dest="serve_command", required=True, metavar="SUBCOMMAND")

    build = sub.add_parser("build-config",
                           help="write pipelines/configs/serve{,_colocated}.yaml with serve build")
    build.add_argument("-o", "--output", default=None, help="output path (default: the repo's)")
    build.add_argument("--check", action="store_true", help="exit 1 if the file is out of date")
    build.set_defaults(handler=_build_config)

    check = sub.add_parser("check-config", help="validate a Serve config file")
    check.add_argument("path", nargs="?", default=None, help="default: pipelines/configs/serve.yaml")
    check.set_defaults(handler=_check_config)


def _build_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    from components.serving.config_file import CONFIG_FILES, IMPORT_PATH, build_serve_config_text

    targets = ({Path(args.output): IMPORT_PATH} if args.output else CONFIG_FILES)
    stale = 0
    for path, import_path in targets.items():
        text = build_serve_config_text(import_path)
        if args.check:
            current = path.read_text() if path.is_file() else ""
            if current != text:
                print(f"{path} is out of date: run 'vitpipe serve build-config'", file=sys.stderr)
                stale += 1
            else:
                print(f"{path} is up to date")
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        print(f"wrote {path}")
    return 1 if stale else 0


def _check_config(args: argparse.Namespace) -> int:
    from pathlib import Path

    import yaml
    from pydantic import ValidationError

    from components.cli.main import UserError
    from components.serving.config_file import SERVE_CONFIG, validate_config

    path = Path(args.path) if args.path else SERVE_CONFIG
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UserError(f"cannot read {path}: {err}") from None
    try:
        summary = validate_config(raw)
    except (ValidationError, ValueError) as err:
        raise UserError(f"{path} is not a valid vitpipe Serve config: {err}") from None
    for line in summary:
        print(line)
    return 0
