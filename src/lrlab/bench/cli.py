"""The ``lrlab`` command line: list, demo (and, as the lab grows, run, sweep, report).

Every subcommand is a function ``_cmd_<name>(args) -> int`` registered in :func:`build_parser`.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

__all__ = ["build_parser", "main"]


def _cmd_list(args: argparse.Namespace) -> int:
    import lrlab.optim as lo

    if args.what != "methods":
        print(f"lrlab list: '{args.what}' is not available yet", file=sys.stderr)
        return 2
    rows = []
    for name in lo.names():
        spec = lo.spec(name)
        needs = [
            flag
            for flag in ("needs_loss", "needs_closure", "needs_example_index")
            if getattr(spec, flag)
        ]
        rows.append(
            {
                "name": name,
                "family": spec.family,
                "confidence": spec.confidence,
                "needs": needs,
                "summary": spec.summary,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        extra = f" [{', '.join(r['needs'])}]" if r["needs"] else ""
        print(f"{r['name']:<{width}}  {r['family']:<16} {r['summary']}{extra}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    import torch

    from lrlab.bench.demo import format_table, run_demo

    torch.set_num_threads(1)
    results = run_demo(initial_lr=args.lr, steps=args.steps)
    print(f"Small MLP, {args.steps} full-batch steps from initial learning rate {args.lr:g}:")
    print(format_table(results))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lrlab", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)

    listing = commands.add_parser("list", help="list registered methods")
    listing.add_argument("what", nargs="?", default="methods", choices=["methods"])
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.set_defaults(handler=_cmd_list)

    demo = commands.add_parser("demo", help="adaptive vs fixed LR from a bad initial LR")
    demo.add_argument("--lr", type=float, default=1e-4, help="initial learning rate")
    demo.add_argument("--steps", type=int, default=600, help="training steps")
    demo.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))
