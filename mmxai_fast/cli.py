"""Command line: ``mmxai-fast demo`` (a tour of the kernels), ``mmxai-fast backends`` and
``mmxai-fast explain`` (NIfTI case + model -> heatmaps)."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_backends(args) -> int:
    from . import backends

    print(json.dumps(backends(), indent=2))
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_kernel_tour

    run_kernel_tour(size=args.size, repeats=args.repeats)
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mmxai-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run every kernel on every usable backend and print timings")
    demo.add_argument("--size", type=int, default=64, help="edge of the cubic test volume (default 64)")
    demo.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    demo.set_defaults(func=_cmd_demo)
    sub.add_parser("backends", help="which backends are usable here, and why not").set_defaults(func=_cmd_backends)
    from .pipeline.cli import add_explain_parser

    add_explain_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
