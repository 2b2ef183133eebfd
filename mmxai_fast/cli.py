"""Command line: ``mmxai-fast demo`` (train and explain a 3D CNN on synthetic brain MRI),
``mmxai-fast tour`` (a tour of the kernels), ``mmxai-fast backends``, ``mmxai-fast explain``
(NIfTI case + model -> heatmaps) and ``mmxai-fast run`` (an unmodified Captum script on the engine)."""
from __future__ import annotations

import argparse
import json
import sys


def _cmd_backends(args) -> int:
    from ._backends import backend_table, format_backend_table

    print(json.dumps(backend_table(), indent=2) if args.json else format_backend_table())
    return 0


def _cmd_tour(args) -> int:
    from .tour import run_kernel_tour

    run_kernel_tour(size=args.size, repeats=args.repeats)
    return 0


def _cmd_demo(args) -> int:
    from .demo import DemoConfig, resolve_demo_method, run_demo

    overrides = {k: v for k, v in (("epochs", args.epochs), ("n_cases", args.cases), ("seed", args.seed))
                 if v is not None}
    try:
        config = DemoConfig.quick(**overrides) if args.quick else DemoConfig(**overrides)
        for method in args.methods:
            resolve_demo_method(method)
    except ValueError as exc:
        args.parser.error(str(exc))
    from ._malloc import keep_freed_memory

    keep_freed_memory()  # this process is the demo's: freed activations stay in the heap for reuse
    try:
        run_demo(args.out, config, anatomy=args.anatomy, methods=args.methods, show_progress=not args.no_progress)
    except ImportError as exc:  # --anatomy mni152 without nilearn
        args.parser.error(str(exc))
    return 0


def _add_demo_parser(sub) -> None:
    from .demo import ANATOMIES, DEFAULT_METHODS

    demo = sub.add_parser("demo", help="train a small 3D CNN on synthetic 4-sequence brain MRI (tumour grade), "
                                       "explain held-out cases, write figures and a summary table",
                          description="Builds brain phantoms (T1, T1ce, T2, FLAIR) with a high- or low-grade "
                                      "glioma (only high grade enhances in T1ce), trains VGG3D to tell them "
                                      "apart, explains held-out high-grade cases and scores each method: "
                                      "localisation (share of positive attribution inside the tumour) and "
                                      "modality ranking. Nothing is downloaded.")
    demo.add_argument("--out", default="mmxai_demo", help="output folder (default ./mmxai_demo)")
    demo.add_argument("--anatomy", choices=ANATOMIES, default="phantom",
                      help="synthetic head (default) or nilearn's MNI152 templates (needs nilearn)")
    demo.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS), metavar="METHOD",
                      help=f"attribution methods (default: {' '.join(DEFAULT_METHODS)}; any of "
                           f"`mmxai-fast explain`'s, e.g. LayerGradCam)")
    demo.add_argument("--quick", action="store_true",
                      help="32^3 volumes, less training, one explained case (under a CPU-minute)")
    demo.add_argument("--epochs", type=int, help="training epochs (default 6, --quick 5)")
    demo.add_argument("--cases", type=int, help="held-out high-grade cases to explain (default 2, --quick 1)")
    demo.add_argument("--seed", type=int, help="seed of data, model and training (default 0)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bars")
    demo.set_defaults(func=_cmd_demo, parser=demo)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mmxai-fast", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_demo_parser(sub)
    tour = sub.add_parser("tour", help="run every kernel on every usable backend and print timings")
    tour.add_argument("--size", type=int, default=64, help="edge of the cubic test volume (default 64)")
    tour.add_argument("--repeats", type=int, default=3, help="timed runs per row (median reported)")
    tour.set_defaults(func=_cmd_tour)
    table = sub.add_parser("backends", help="op x backend table: which backend runs which op here, and why not")
    table.add_argument("--json", action="store_true", help="one JSON row per (op, backend)")
    table.set_defaults(func=_cmd_backends)
    from .pipeline.cli import add_explain_parser
    from .run_script import add_run_parser

    add_explain_parser(sub)
    add_run_parser(sub)
    from .cohort.cli import add_cohort_parser, add_profile_parser  # argparse only; the work is imported lazily

    add_cohort_parser(sub)
    add_profile_parser(sub)
    from .pipeline.evaluate import add_evaluate_parser

    add_evaluate_parser(sub)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
