"""``mmxai-fast run [options] SCRIPT [ARGS...]``: an unmodified Captum pipeline on the engine.

Like ``python -m cProfile``: patches Captum (:func:`mmxai_fast.patch_captum`, in place, so classes
the script imported at its top are covered too), then runs SCRIPT as ``__main__`` with
``sys.argv = [SCRIPT, *ARGS]`` and the script's folder first on ``sys.path``. The script's exit code
and exceptions pass through; ``--report`` prints per attribution class the calls, model
evaluations, time in the model and engine time at exit (also when the script fails).
"""
from __future__ import annotations

import argparse
import os
import runpy
import sys
from typing import TYPE_CHECKING, ContextManager, List, Optional

if TYPE_CHECKING:
    from .profiling import AttributionProfile

__all__ = ["add_run_parser", "run_script"]


def run_script(script: str, args: List[str], *, batch: str = "auto", report: bool = False,
               channels_last: str = "auto", autocast: Optional[str] = None, compile: bool = False,
               cuda_graphs: bool = False, inference_mode: bool = True, onednn_conv: str = "auto", malloc: str = "system",
               incremental: str = "auto", fold_batchnorm: bool = False, profile: bool = False,
               trace: Optional[str] = None) -> int:
    """Run ``script`` patched; returns its exit code (exceptions propagate). ``malloc="keep"``
    (the CLI's default): glibc keeps freed blocks for reuse (:mod:`mmxai_fast._malloc`; a process-wide
    setting, so "system", glibc's defaults, is this function's default). ``profile``: run it under
    :func:`mmxai_fast.profiling.profile_attributions` and print the breakdown per attribution call and
    per phase at exit (``trace``: also write a Chrome trace)."""
    import contextlib

    from .attr._model_policy import ModelPolicy, format_calls, format_report, reset_report
    from .attr._patch import patch_captum, unpatch_captum

    choice = {"auto": "auto", "on": True, "off": False}
    policy = ModelPolicy(batch=batch, channels_last=choice[channels_last], autocast=autocast, compile=compile,
                         cuda_graphs=cuda_graphs, inference_mode=inference_mode, onednn_conv=choice[onednn_conv],
                         incremental=choice[incremental], fold_batchnorm=fold_batchnorm)
    from ._malloc import keep_freed_memory

    malloc_note = keep_freed_memory() if malloc == "keep" else None
    saved_argv, saved_path = sys.argv[:], sys.path[:]
    sys.argv = [script, *args]
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    reset_report()
    unpatch_captum()
    patch_captum(policy=policy)
    code = 0
    if profile:
        from .profiling import profile_attributions

        profiling: ContextManager[Optional[AttributionProfile]] = profile_attributions(trace=trace)
    else:
        profiling = contextlib.nullcontext()
    try:
        with profiling as prof:
            try:
                runpy.run_path(script, run_name="__main__")
            except SystemExit as exc:  # inside the profiler's block, so it still records the trace
                code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
                if not isinstance(exc.code, int) and exc.code is not None:
                    print(exc.code, file=sys.stderr)
    finally:
        unpatch_captum()
        sys.argv, sys.path[:] = saved_argv, saved_path
        if report:
            print(format_report(), file=sys.stderr)
            if malloc_note:
                print(f"  {malloc_note}", file=sys.stderr)
    if profile:
        print(format_calls(), file=sys.stderr)
        print(prof.report(), file=sys.stderr)
    return code


def _cmd_run(args: argparse.Namespace) -> int:
    if not os.path.isfile(args.script):
        args.parser.exit(2, f"mmxai-fast run: error: SCRIPT must be an existing file, got {args.script!r}\n")
    return run_script(args.script, args.args, batch=args.batch, report=args.report,
                      channels_last=args.channels_last, autocast=args.autocast, compile=args.compile,
                      cuda_graphs=args.cuda_graphs, inference_mode=not args.no_inference_mode,
                      onednn_conv=args.onednn_conv, malloc=args.malloc, incremental=args.incremental,
                      fold_batchnorm=args.fold_batchnorm == "on", profile=args.profile or args.trace is not None,
                      trace=args.trace)


def add_run_parser(sub) -> None:
    run = sub.add_parser("run", help="run an unmodified Captum script on the engine (like python -m cProfile)",
                         description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    run.add_argument("--batch", choices=("auto", "keep"), default="auto",
                     help="auto (default): perturbations_per_eval=1 becomes a measured chunk size where "
                          "batching is safe; keep: the script's value")
    run.add_argument("--report", action="store_true",
                     help="at exit, print per method: calls, model evaluations, time in the model, engine time")
    run.add_argument("--profile", action="store_true",
                     help="at exit, print the breakdown per attribution call and per phase (torch.profiler)")
    run.add_argument("--trace", metavar="TRACE.json", help="with --profile: write a Chrome trace (Perfetto)")
    run.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto",
                     help="feed 3D inputs in channels_last_3d: auto (when measured faster), on, off")
    run.add_argument("--onednn-conv", choices=("auto", "on", "off"), default="auto",
                     help="run CPU conv3d calls bound for PyTorch's slow batch-1 path on oneDNN: auto (kernels "
                          "larger than 1x1x1, and 1x1x1 ones of channels-last inputs), on (all), off")
    run.add_argument("--incremental", choices=("auto", "on", "off"), default="auto",
                     help="Occlusion, FeatureAblation and ShapleyValueSampling recompute only what each perturbation "
                          "changes: auto (default: where the plan predicts more than 1.5x fewer FLOPs, 3x at one "
                          "perturbation per call), on, off")
    run.add_argument("--fold-batchnorm", choices=("on", "off"), default="off",
                     help="on (opt-in): call CPU models as a copy with each eval-mode BatchNorm folded into the "
                          "convolution before it (a ReLU after it fused in; the copy runs, not your object); "
                          "off (default): the model as it is")
    run.add_argument("--malloc", choices=("keep", "system"), default="keep",
                     help="keep (default): glibc malloc keeps freed blocks for reuse (no mmap/munmap and page "
                          "faults per model call; the process keeps its peak memory); system: glibc's defaults")
    run.add_argument("--autocast", choices=("bf16", "fp16"), help="run the model under autocast (opt-in)")
    run.add_argument("--compile", action="store_true", help="torch.compile the model once per shape (opt-in)")
    run.add_argument("--cuda-graphs", action="store_true", help="replay CUDA graphs for fixed-shape chunks (GPU)")
    run.add_argument("--no-inference-mode", action="store_true", help="call the model without inference_mode")
    run.add_argument("script", metavar="SCRIPT", help="the Python script to run")
    run.add_argument("args", nargs=argparse.REMAINDER, metavar="ARGS", help="the script's own arguments")
    run.set_defaults(func=_cmd_run, parser=run)
