"""``vitpipe registry ...``: list, register, promote (gate or manual), history.

The tracking server comes from ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``. Every
registry mistake (unknown model/version, missing artifacts, wrong task) is exit code 2 with
one line on stderr, and no alias is moved.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path
from typing import get_args

from components.core.names import ModelTask

DEFAULT_PROMOTE_CONFIG = Path(__file__).resolve().parents[2] / "pipelines/configs/promote.yaml"


def register(subparsers: argparse._SubParsersAction) -> None:
    reg = subparsers.add_parser("registry", help="model registry: list, register, promote, history")
    reg.add_argument("--tracking-uri", default=None, help="default: $MLFLOW_TRACKING_URI")
    sub = reg.add_subparsers(dest="registry_command", required=True, metavar="SUBCOMMAND")

    ls = sub.add_parser("list", help="registered models, versions, aliases, key metrics")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(handler=_list)

    rg = sub.add_parser("register", help="register a checkpoint directory as a new version")
    rg.add_argument("--checkpoint", required=True, help="directory with model.safetensors + vitpipe.json")
    rg.add_argument("--task", choices=get_args(ModelTask), default=None,
                    help="default: the checkpoint's task")
    rg.add_argument("--model", default=None, help="registered name (default per task)")
    rg.add_argument("--run-id", default=None, help="log into this MLflow run")
    rg.set_defaults(handler=_register)

    pr = sub.add_parser(
        "promote",
        help="judge a candidate against @champion (or, with --version/--alias, set an alias)",
        description="Without --version: evaluate the candidate (default: newest version) and "
        "the current @champion on the validation data of --config and move @champion only if "
        "the candidate is better by the margin. With --version V --alias A: manual override "
        "or rollback, recorded in the history.",
    )
    pr.add_argument("--model", required=True, help="registered model name")
    pr.add_argument("--candidate", default=None, help="version to judge (default: newest)")
    pr.add_argument("--version", default=None, help="manual: the version to point --alias at")
    pr.add_argument("--alias", default=None, help="manual: alias to set (with --version)")
    pr.add_argument("--reason", default=None, help="manual: why (stored in the history)")
    pr.add_argument("--config", default=None,
                    help=f"promotion config (default: {DEFAULT_PROMOTE_CONFIG.name})")
    pr.add_argument("--json", action="store_true", help="print the decision as JSON")
    pr.add_argument("overrides", nargs="*", help="config overrides key.sub=value")
    pr.set_defaults(handler=_promote)

    hi = sub.add_parser("history", help="promotion history of a registered model")
    hi.add_argument("--model", required=True)
    hi.add_argument("--json", action="store_true")
    hi.set_defaults(handler=_history)


def _user_errors(fn):
    """Registry mistakes become ``UserError`` (exit 2) at the CLI boundary."""

    def wrapped(args: argparse.Namespace) -> int:
        from components.cli.main import UserError
        from components.tracking.registry import RegistryError

        try:
            return fn(args)
        except RegistryError as err:
            raise UserError(str(err)) from None

    return wrapped


@_user_errors
def _list(args: argparse.Namespace) -> int:
    from components.tracking.listing import format_models, list_models

    models = list_models(tracking_uri=args.tracking_uri)
    print(json.dumps(models, indent=2) if args.json else format_models(models))
    return 0


@_user_errors
def _register(args: argparse.Namespace) -> int:
    from components.core.checkpoint import read_meta
    from components.tracking.registry import default_name, register_checkpoint

    task = args.task or read_meta(args.checkpoint).task
    name = args.model or default_name(task)
    version = register_checkpoint(
        args.checkpoint, task=task, run_id=args.run_id, registered_name=name,
        tracking_uri=args.tracking_uri,
    )
    print(f"registered {name} version {version}")
    return 0


@_user_errors
def _promote(args: argparse.Namespace) -> int:
    from components.cli.main import UserError

    if (args.version is None) != (args.alias is None):
        raise UserError("manual promotion needs both --version and --alias")
    if args.version is not None:
        if args.candidate or args.overrides or args.config:
            raise UserError("--version/--alias set an alias directly: drop --candidate, "
                            "--config and overrides")
        from components.tracking.promotion import set_alias

        event = set_alias(
            args.model, args.version, args.alias, reason=args.reason or "manual override",
            tracking_uri=args.tracking_uri,
        )
        if args.json:
            print(json.dumps(event, indent=2))
        else:
            previous = event["previous"] or "none"
            print(f"{args.model}: @{args.alias} -> version {args.version} "
                  f"(was {previous}; manual: {event['reason']})")
        return 0

    from components.core.config import load_config
    from components.tracking.promotion import PromoteConfig, promote

    overrides = [f"model={args.model}", *args.overrides]
    if args.candidate:
        overrides.append(f"candidate='{args.candidate}'")
    if args.tracking_uri:
        overrides.append(f"tracking_uri={args.tracking_uri}")
    cfg = load_config(PromoteConfig, args.config or DEFAULT_PROMOTE_CONFIG, overrides)
    # MLflow prints run links on stdout; keep stdout for the answer (JSON must parse).
    with contextlib.redirect_stdout(sys.stderr):
        result = promote(cfg)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2, default=str))
    else:
        print(describe(result))
    return 0


def describe(result) -> str:
    """One line per fact of a :class:`PromotionResult`."""
    if result.decision == "already-champion":
        return f"{result.model} version {result.candidate} already holds @champion"
    champ = (f"champion v{result.champion} {result.metric}={result.champion_score:.4f}"
             if result.champion else "no champion")
    return (
        f"{result.model}: candidate v{result.candidate} {result.metric}="
        f"{result.candidate_score:.4f} vs {champ} (margin {result.margin:g}) -> "
        f"{result.decision}; @{result.alias_set} -> v{result.candidate} "
        f"(promotion run {result.run_id})"
    )


@_user_errors
def _history(args: argparse.Namespace) -> int:
    from components.tracking.history import format_history, read_history
    from components.tracking.registry import client, get_registered_model

    get_registered_model(args.model, tracking_uri=args.tracking_uri)
    events = read_history(client(args.tracking_uri), args.model)
    print(json.dumps(events, indent=2) if args.json else format_history(events))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use: vitpipe registry ...")
