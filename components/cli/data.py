"""``vitpipe data ...``: synthesize, inspect and show datasets."""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    data = subparsers.add_parser("data", help="datasets: synthesize, inspect, show")
    sub = data.add_subparsers(dest="data_command", required=True, metavar="SUBCOMMAND")

    synth = sub.add_parser("synth", help="write the embedded synthetic dataset (COCO + ImageFolder)")
    synth.add_argument("--out", required=True, help="output directory")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--num-train", type=int, default=None)
    synth.add_argument("--num-val", type=int, default=None)
    synth.add_argument("--image-size", type=int, default=None)
    synth.set_defaults(handler=_synth)


def _synth(args: argparse.Namespace) -> int:
    from components.cli.main import UserError
    from components.data.synth import SynthConfig, synthesize

    given = {"seed": args.seed, "num_train": args.num_train, "num_val": args.num_val,
             "image_size": args.image_size}
    try:
        cfg = SynthConfig(**{k: v for k, v in given.items() if v is not None})
    except ValueError as err:
        raise UserError(str(err)) from None
    out = synthesize(args.out, cfg, progress=True)
    print(f"wrote {cfg.num_train} train + {cfg.num_val} val images to {out}")
    return 0
