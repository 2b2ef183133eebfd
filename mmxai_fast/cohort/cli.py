"""``mmxai-fast cohort`` (a whole cohort, resumable, under torchrun) and ``mmxai-fast profile``
(where the time of one attribution goes). Bad arguments and refused output folders end the
command with exit status 2 and one line naming the cause."""
from __future__ import annotations

import argparse
import json
import sys

__all__ = ["add_cohort_parser", "add_profile_parser", "run_cohort_cli", "run_profile_cli"]


def _add_model_args(p, required: bool) -> None:
    model = p.add_argument_group("model (--model, or --state-dict with --factory)")
    src = model.add_mutually_exclusive_group(required=required)
    src.add_argument("--model", metavar="PATH", help="TorchScript file (torch.jit.save)")
    src.add_argument("--state-dict", metavar="PATH", help="state dict, loaded with weights_only=True")
    model.add_argument("--factory", metavar="MODULE:CALLABLE", help="builds the model for --state-dict")
    model.add_argument("--factory-kwargs", metavar="JSON", help="keyword arguments for --factory, a JSON object")
    model.add_argument("--device", help="where the model runs (default: cuda:LOCAL_RANK when CUDA is available, else cpu)")


def _add_method_args(p) -> None:
    m = p.add_argument_group("method")
    m.add_argument("--method", default="ShapleyValueSampling", help="any method of `mmxai-fast explain` (default Shapley)")
    m.add_argument("--n-samples", type=int, help="permutations (Shapley) or the method's sample count")
    m.add_argument("--method-kwargs", metavar="JSON", help="more arguments for the method (not for Shapley in a cohort)")
    m.add_argument("--n-segments", type=int, default=200, help="SLIC superpixels per modality (default 200)")
    m.add_argument("--compactness", type=float, default=0.1, help="SLIC compactness (default 0.1)")
    m.add_argument("--joint", action="store_true", help="one superpixel mask shared by all modalities")
    m.add_argument("--baseline", default="zeros", help="zeros, gaussian, blur[:SIGMA], or a number (default zeros)")
    m.add_argument("--seed", type=int, default=0, help="run seed; each case's seed is derived from it and its id")
    m.add_argument("--target", type=int, help="class to explain (default: the model's prediction per case)")
    m.add_argument("--normalize", choices=["zscore"], help="per-modality z-score inside the foreground")


def add_cohort_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("cohort", help="explain every case of a cohort (BraTS folder or CSV), resumable, under torchrun",
                       description="Explain every case of a cohort with one method. Run it under torchrun to "
                                   "shard cases (or the work within one case) across processes, GPUs and "
                                   "machines; rerun the same command after an interruption to resume.")
    p.add_argument("--cases", required=True, metavar="DIR|CSV",
                   help="folder with one sub-folder per case (*_t1.nii.gz, *_t1ce.nii.gz, *_t2.nii.gz, "
                        "*_flair.nii.gz, *_seg.nii.gz as ROI), or a CSV: case, one column per modality, roi")
    p.add_argument("--modalities", nargs="+", metavar="NAME", help="modalities (default t1 t1ce t2 flair; CSV: its columns)")
    p.add_argument("--roi-name", default="seg", help="suffix of the ROI file in a case folder (default seg)")
    _add_model_args(p, required=True)
    _add_method_args(p)
    p.add_argument("--smooth", type=float, metavar="SIGMA", help="Gaussian smoothing of the figures' heatmaps")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="output folder (manifest.json, failures.json, one folder per case)")
    p.add_argument("--shard", choices=["auto", "cases", "permutations"], default="auto",
                   help="split cases across ranks, or the work within one case: Shapley permutations, Occlusion "
                        "windows, FeatureAblation features, Lime/KernelShap coalitions (default auto: within a "
                        "case when fewer cases remain than ranks)")
    p.add_argument("--checkpoint-every", type=int, default=8, metavar="N",
                   help="save partial Shapley sums every N permutations per rank (default 8)")
    p.add_argument("--chunk", type=int, default=32, help="inputs per model call (default 32)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--dist-timeout", type=float, metavar="SECONDS",
                   help="under torchrun: how long a rank waits for the others in a collective before it fails "
                        "(default torch's, 30 min)")
    p.set_defaults(func=run_cohort_cli, parser=p)
    return p


def _method_kwargs(args, parser) -> dict:
    if not args.method_kwargs:
        return {}
    try:
        kwargs = json.loads(args.method_kwargs)
    except json.JSONDecodeError as exc:
        parser.error(f"--method-kwargs: not valid JSON ({exc.msg}): {args.method_kwargs!r}")
    if not isinstance(kwargs, dict):
        parser.error(f"--method-kwargs: must be a JSON object, got {args.method_kwargs!r}")
    return kwargs


def _settings(args, parser):
    from ..pipeline import Baseline, resolve_method
    from ..pipeline.explain import check_method_kwargs
    from .case_job import SAMPLE_ARG, SHAPLEY, CohortSettings

    try:
        method = resolve_method(args.method)
    except ValueError as exc:
        parser.error(f"--method: {exc}")
    kwargs = _method_kwargs(args, parser)
    if method == SHAPLEY and kwargs:
        parser.error(f"--method-kwargs: the cohort's sharded {SHAPLEY} takes only --n-samples, got {sorted(kwargs)}")
    try:
        check_method_kwargs(method, kwargs)
    except ValueError as exc:
        parser.error(f"--method-kwargs: {exc}")
    if args.n_samples is not None and method not in SAMPLE_ARG:
        parser.error(f"--n-samples: method {method} takes no sample count")
    minimum = 2 if method == SHAPLEY else 1
    if args.n_samples is not None and args.n_samples < minimum:
        parser.error(f"--n-samples: must be >= {minimum}, got {args.n_samples}")
    for flag, value, low in (("--n-segments", args.n_segments, 1),
                             ("--checkpoint-every", getattr(args, "checkpoint_every", 1), 1),
                             ("--chunk", getattr(args, "chunk", 1), 1)):
        if value < low:
            parser.error(f"{flag}: must be >= {low}, got {value}")
    if args.target is not None and args.target < 0:
        parser.error(f"--target: must be >= 0, got {args.target}")
    try:
        Baseline.parse(args.baseline)
    except ValueError as exc:
        parser.error(f"--baseline: {exc}")
    n_samples = args.n_samples if args.n_samples is not None else (25 if method == SHAPLEY else None)
    return CohortSettings(method=method, n_samples=n_samples, method_kwargs=kwargs, n_segments=args.n_segments,
                          compactness=args.compactness, joint=args.joint, baseline=args.baseline, seed=args.seed,
                          target=args.target, normalize=args.normalize,
                          modalities=tuple(getattr(args, "modalities", None) or ()),
                          smooth=getattr(args, "smooth", None))


def _load_model(args, parser):
    from ..pipeline.models_io import ModelLoadError, load_state_dict_model, load_torchscript, parse_factory_kwargs

    if args.state_dict and not args.factory:
        parser.error("--factory: required with --state-dict (e.g. mmxai_fast.models:VGG3D)")
    try:
        if args.model:
            return load_torchscript(args.model)
        return load_state_dict_model(args.state_dict, args.factory, parse_factory_kwargs(args.factory_kwargs))
    except ModelLoadError as exc:
        head, _, tail = str(exc).partition(":")
        parser.error(f"--{head}: {tail.strip()}")


def run_cohort_cli(args) -> int:
    parser = args.parser
    settings = _settings(args, parser)
    from .discovery import BRATS_MODALITIES, discover_cases
    from .distributed import RankFailed, init_distributed
    from .manifest import ManifestError
    from .runner import run_cohort

    try:
        specs = discover_cases(args.cases, args.modalities, args.roi_name)
    except (ValueError, OSError) as exc:
        parser.error(f"--cases: {exc}")
    if not settings.modalities:
        settings = type(settings)(**{**settings.__dict__, "modalities": tuple(
            name for name, _ in specs[0].modalities) or tuple(BRATS_MODALITIES)})
    if args.dist_timeout is not None and not args.dist_timeout > 0:
        parser.error(f"--dist-timeout: must be > 0, got {args.dist_timeout}")
    model = _load_model(args, parser)
    dist = init_distributed(args.device, timeout_s=args.dist_timeout)
    try:
        report = run_cohort(specs, model, args.out, settings, dist=dist, shard=args.shard,
                            checkpoint_every=args.checkpoint_every, chunk=args.chunk,
                            show_progress=not args.no_progress)
    except ManifestError as exc:
        print(f"mmxai-fast cohort: error: --out: {exc}", file=sys.stderr)
        return 2
    except RankFailed as exc:
        print(f"mmxai-fast cohort: error (rank {dist.rank} of {dist.world_size}): {exc}; rerun the same command "
              f"to resume", file=sys.stderr)
        return 1
    finally:
        dist.close()
    if dist.rank == 0:
        print(f"cohort: {len(report.done)}/{len(specs)} cases done ({len(report.skipped)} were done before, "
              f"{len(report.failed)} failed, see {args.out}/failures.json); shard {report.shard}, "
              f"{dist.world_size} rank(s), {report.wall_s:.1f} s, {report.cases_per_hour:.0f} cases/hour on rank 0, "
              f"{report.resumed_permutations} permutations resumed from checkpoints on rank 0")
    return 0


def add_profile_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("profile", help="profile one attribution: time in the model vs the engine, evaluations/s, trace",
                       description="Run a method on a case (or the demo phantom with an untrained VGG3D) under "
                                   "torch.profiler and print where the time goes.")
    p.add_argument("--modality", nargs="+", metavar="NAME=PATH", help="the case, one NIfTI per modality (default: phantom)")
    p.add_argument("--roi", metavar="PATH", help="ROI mask of the case")
    p.add_argument("--phantom-size", type=int, default=32, help="edge of the demo phantom (default 32)")
    _add_model_args(p, required=False)
    _add_method_args(p)
    p.add_argument("--trace", metavar="PATH", help="write a Chrome trace (opens in Perfetto)")
    p.add_argument("--png", metavar="PATH", help="write the breakdown per phase and per op as a PNG")
    p.add_argument("--json", metavar="PATH", help="write the breakdown as JSON")
    p.set_defaults(func=run_profile_cli, parser=p)
    return p


def _profile_inputs(args, parser):
    import torch

    if args.modality:
        from ..pipeline import CaseError, load_case

        pairs = dict(item.partition("=")[::2] for item in args.modality)
        if any(not k or not v for k, v in pairs.items()):
            parser.error(f"--modality: expected NAME=PATH, got {args.modality}")
        try:
            case = load_case(pairs, roi=args.roi, normalize=args.normalize)
        except CaseError as exc:
            parser.error(f"--modality: {exc}")
    else:
        if args.phantom_size < 24:
            parser.error(f"--phantom-size: must be >= 24, got {args.phantom_size}")
        from ..demo import phantom_case
        from ..phantom import make_brain_phantom

        case = phantom_case(make_brain_phantom((args.phantom_size,) * 3, seed=args.seed))
    if args.model or args.state_dict:
        model = _load_model(args, parser)
    else:
        from ..models import VGG3D

        torch.manual_seed(args.seed)
        model = VGG3D(in_channels=case.image.shape[0], widths=(8, 16)).eval()
    return case, model


def run_profile_cli(args) -> int:
    parser = args.parser
    settings = _settings(args, parser)
    case, model = _profile_inputs(args, parser)
    from ..pipeline import Baseline, Superpixels, explain
    from ..profiling import profile_attributions
    from .case_job import SAMPLE_ARG

    kwargs = dict(settings.method_kwargs)
    if settings.n_samples is not None:
        kwargs[SAMPLE_ARG[settings.method]] = settings.n_samples
    with profile_attributions(trace=args.trace) as prof:
        explain(model, case, method=settings.method, target=settings.target,
                superpixels=Superpixels(n_segments=settings.n_segments, compactness=settings.compactness,
                                        joint=settings.joint),
                baseline=Baseline.parse(settings.baseline, seed=settings.seed), method_kwargs=kwargs,
                device=args.device, show_progress=False, seed=settings.seed)
    print(f"profile: {settings.method} on a {'x'.join(map(str, case.image.shape))} case")
    print(prof.report())
    if args.png:
        prof.save_png(args.png)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(prof.to_dict(), handle, indent=2)
    if args.trace:
        print(f"trace written to {args.trace} (open it in https://ui.perfetto.dev)")
    return 0
