"""``vitpipe models list [--task T] [--json]``: every registered model with its size and cost.

Prints name, task, parameters and GFLOPs (2 × MACs, one image at the model's default
resolution), counted on the meta device (no weights are allocated); "n/a" (JSON ``null``)
for models whose forward pass cannot run there (the transformers detectors). ``--json`` prints one
JSON list of objects with keys ``name``, ``task``, ``params``, ``gflops`` (plus ``gmacs``,
``img_size``, ``patch_size``, ``description``).
"""

from __future__ import annotations

import argparse
import json
from typing import get_args

from components.core.names import ModelTask


def register(subparsers: argparse._SubParsersAction) -> None:
    models = subparsers.add_parser("models", help="registered model architectures")
    sub = models.add_subparsers(dest="models_command", required=True, metavar="SUBCOMMAND")
    lst = sub.add_parser("list", help="every registered model: task, parameters, GFLOPs")
    lst.add_argument("--task", choices=get_args(ModelTask), default=None)
    lst.add_argument("--json", action="store_true", help="print one JSON list")
    lst.set_defaults(handler=_list)


def _list(args: argparse.Namespace) -> int:
    from components.models.summary import summarize_all

    rows = summarize_all(args.task)
    if args.json:
        print(json.dumps([r.to_dict() for r in rows], indent=1))
        return 0
    print(f"{'name':<24} {'task':<15} {'params':>12} {'GFLOPs':>10}  {'input':<10} description")
    for r in rows:
        size = "x".join(str(v) for v in r.img_size)
        gflops = "n/a" if r.gflops is None else f"{r.gflops:.3f}"
        print(f"{r.name:<24} {r.task:<15} {r.params / 1e6:>11.2f}M {gflops:>10}  {size:<10} {r.description}")
    return 0
