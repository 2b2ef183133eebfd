"""``mmxai-fast explain``: NIfTI case + trained model -> heatmaps, importance, figures.

Every argument is checked before the explanation starts: syntax, finite ranges, the device,
the values inside ``--method-kwargs``, that ``--out`` can receive the output set, then the model
and the case load, the Grad-CAM layer and slice exist, and one run of the model on the case gives
a finite ``[1, classes]`` output with ``--target`` in range. A bad argument ends the command with
exit status 2 and one line, ``mmxai-fast explain: error: --FLAG: ...`` (no usage block).
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any, Dict, List

__all__ = ["add_explain_parser", "run_explain"]

DEFAULT_WINDOWS = ("brain", "subdural", "bone")
# The sampling-count argument of each method, set by --n-samples.
_SAMPLE_ARG = {"ShapleyValueSampling": "n_samples", "Lime": "n_samples", "KernelShap": "n_samples",
               "GradientShap": "n_samples", "SmoothGrad": "nt_samples", "IntegratedGradients": "n_steps"}


def add_explain_parser(sub) -> argparse.ArgumentParser:
    from .explain import METHODS

    p = sub.add_parser("explain", help="explain a trained 3D model's prediction on one case (NIfTI in, heatmaps out)",
                       description="Explain a trained model's prediction on co-registered NIfTI volumes: one "
                                   "heatmap per modality (NIfTI), importance.json, summary.json and PNG figures.")
    case = p.add_argument_group("case (one of --modality, --image, --ct)")
    src = case.add_mutually_exclusive_group(required=True)
    src.add_argument("--modality", nargs="+", metavar="NAME=PATH",
                     help="one NIfTI per modality, e.g. t1=t1.nii.gz flair=flair.nii.gz")
    src.add_argument("--image", metavar="PATH", help="one 4D NIfTI, modalities on the last axis")
    src.add_argument("--ct", metavar="PATH", help="CT volume in HU, expanded into --windows channels")
    case.add_argument("--names", nargs="+", metavar="NAME", help="modality names for --image")
    case.add_argument("--windows", nargs="+", metavar="WINDOW",
                      help="CT windows: preset names or LEVEL:WIDTH (default: brain subdural bone)")
    case.add_argument("--roi", metavar="PATH", help="tumour/ROI mask (chooses the figure's slice)")
    case.add_argument("--foreground", metavar="PATH", help="brain/body mask (default: derived from the intensities)")
    case.add_argument("--normalize", choices=["zscore"],
                      help="per-modality z-score inside the foreground, as the model was trained")
    model = p.add_argument_group("model (--model, or --state-dict with --factory)")
    src_model = model.add_mutually_exclusive_group(required=True)
    src_model.add_argument("--model", metavar="PATH", help="TorchScript file (torch.jit.save)")
    src_model.add_argument("--state-dict", metavar="PATH", help="state dict, loaded with weights_only=True")
    model.add_argument("--factory", metavar="MODULE:CALLABLE",
                       help="builds the model for --state-dict, e.g. mmxai_fast.models:VGG3D")
    model.add_argument("--factory-kwargs", metavar="JSON", help='keyword arguments for --factory, e.g. \'{"in_channels": 4}\'')
    model.add_argument("--device", help="where the model runs (default cpu)")
    method = p.add_argument_group("method")
    method.add_argument("--method", default="ShapleyValueSampling",
                        help=f"one of {', '.join(METHODS)}, or an alias (shapley, ig, gradcam...); "
                             f"default ShapleyValueSampling")
    method.add_argument("--target", type=int, help="class index to explain (default: the model's prediction)")
    method.add_argument("--n-samples", type=int, help="samples/steps of the method (n_samples, nt_samples or n_steps)")
    method.add_argument("--method-kwargs", metavar="JSON", help="more arguments for the method's attribute(), a JSON object")
    method.add_argument("--n-segments", type=int, help="SLIC superpixels per modality (default 200)")
    method.add_argument("--compactness", type=float, default=0.1,
                        help="SLIC compactness on z-scored intensities (default 0.1)")
    method.add_argument("--joint", action="store_true", help="one superpixel mask shared by all modalities")
    method.add_argument("--baseline", default="zeros",
                        help="removed features become: zeros, gaussian, blur[:SIGMA], or a number (default zeros)")
    method.add_argument("--layer", metavar="NAME", help="Grad-CAM layer (default: the last conv layer)")
    method.add_argument("--seed", type=int, default=0, help="seed of the sampling methods and the Gaussian baseline")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder")
    out.add_argument("--slice", type=int,
                     help="axial slice of the figure (default: largest ROI area, else largest |attribution|)")
    out.add_argument("--smooth", type=float, metavar="SIGMA", help="Gaussian smoothing of the figure's heatmaps, in voxels")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    out.add_argument("--metrics", action="store_true", help="also score the explanation (needs --roi): "
                                                             "evaluation.json and curves.png, as mmxai-fast evaluate")
    p.set_defaults(func=run_explain, parser=p)
    p.error = _one_line_error(p)  # type: ignore[method-assign]
    return p


def _one_line_error(parser):
    def error(message: str):
        parser.exit(2, f"{parser.prog}: error: {' '.join(str(message).split())}\n")

    return error


def _fail(message, parser) -> None:
    if message:
        parser.error(message)


def _json_object(text: str, flag: str, parser) -> Dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        parser.error(f"{flag}: not valid JSON ({exc.msg}): {text!r}")
    if not isinstance(value, dict):
        parser.error(f"{flag}: must be a JSON object, got {text!r}")
    return value


def _modalities(pairs: List[str], parser) -> Dict[str, str]:
    found: Dict[str, str] = {}
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            parser.error(f"--modality: expected NAME=PATH, got {pair!r}")
        if name in found:
            parser.error(f"--modality: modality {name!r} given twice")
        found[name] = path
    return found


def _windows(items: List[str], parser):
    from ..ops.hu_window import HU_WINDOW_PRESETS, parse_windows

    windows: List[Any] = []
    for item in items:
        if item in HU_WINDOW_PRESETS:
            windows.append(item)
            continue
        level, sep, width = item.partition(":")
        try:
            windows.append((float(level), float(width)))
            if not sep or not float(width) > 0 or not all(math.isfinite(v) for v in windows[-1]):
                raise ValueError
        except ValueError:
            parser.error(f"--windows: {item!r} is neither a preset ({', '.join(HU_WINDOW_PRESETS)}) nor LEVEL:WIDTH "
                         f"with finite LEVEL and WIDTH > 0")
    try:
        parse_windows(windows)
    except ValueError as exc:
        parser.error(f"--windows: {exc}")
    return windows


def _check_combinations(args, parser, method: str) -> None:
    """Options that only make sense together (or apart)."""
    from .cli_checks import GRADCAM_METHODS

    if args.names and not args.image:
        parser.error("--names: only with --image")
    if args.windows and not args.ct:
        parser.error("--windows: only with --ct")
    if args.normalize and args.ct:
        parser.error("--normalize: not with --ct (CT windows are already in [0, 1])")
    if args.state_dict and not args.factory:
        parser.error("--factory: required with --state-dict (e.g. mmxai_fast.models:VGG3D)")
    if (args.factory or args.factory_kwargs) and not args.state_dict:
        parser.error("--factory/--factory-kwargs: only with --state-dict")
    if args.layer is not None and method not in GRADCAM_METHODS:
        parser.error(f"--layer: only with {' or '.join(GRADCAM_METHODS)}, not {method}")
    if args.metrics and args.roi is None:
        parser.error("--metrics: needs --roi (the tumour/region mask: MSFI's region and the localisation target)")


def _check_numbers(args, parser) -> None:
    from .cli_checks import INT32_MAX, SEED_MAX, device_error, number

    for message in (number(args.target, "--target", low=0, high=INT32_MAX, integer=True),
                    number(args.n_segments, "--n-segments", low=1, high=INT32_MAX, integer=True),
                    number(args.compactness, "--compactness", low=0, low_open=True),
                    number(args.smooth, "--smooth", low=0),
                    number(args.slice, "--slice", low=0, high=INT32_MAX, integer=True),
                    number(args.seed, "--seed", low=0, high=SEED_MAX, integer=True),
                    device_error(args.device)):
        _fail(message, parser)


def _check_method_kwargs(args, parser, method: str) -> dict:
    """``--method-kwargs`` plus ``--n-samples``, checked against the method."""
    from .cli_checks import INT32_MAX, number
    from .explain import check_method_kwargs

    kwargs = _json_object(args.method_kwargs, "--method-kwargs", parser) if args.method_kwargs else {}
    if args.n_samples is not None:
        if method not in _SAMPLE_ARG:
            parser.error(f"--n-samples: method {method} takes no sample count "
                         f"(it applies to {', '.join(_SAMPLE_ARG)})")
        _fail(number(args.n_samples, "--n-samples", low=1, high=INT32_MAX, integer=True), parser)
        kwargs[_SAMPLE_ARG[method]] = args.n_samples
    try:
        return check_method_kwargs(method, kwargs)
    except ValueError as exc:
        parser.error(f"--method-kwargs: {exc}")
        raise  # parser.error exits; this tells the type checker


def _check_files_and_names(args, parser, checked: dict) -> None:
    from .cli_checks import names_error

    files = [("--image", args.image), ("--ct", args.ct), ("--roi", args.roi), ("--foreground", args.foreground),
             ("--model", args.model), ("--state-dict", args.state_dict)]
    files += [(f"--modality {name}", path) for name, path in (checked["modalities"] or {}).items()]
    for flag, path in files:
        if path is not None and not Path(path).is_file():
            parser.error(f"{flag}: file {path!r} does not exist")
    if args.modality:
        _fail(names_error(list(checked["modalities"]), "--modality"), parser)
    if args.names:
        _fail(names_error(args.names, "--names"), parser)
    if args.ct:
        from .case import _window_name

        _fail(names_error([_window_name(w) for w in checked["windows"]], "--windows"), parser)


def _check_args(args, parser) -> dict:
    """Everything that needs no file reading: syntax, ranges, combinations, file existence."""
    from .baselines import Baseline
    from .explain import resolve_method
    from .outputs import OutputError, check_output_dir

    checked: Dict[str, Any] = {}
    try:
        checked["method"] = resolve_method(args.method)
    except ValueError as exc:
        parser.error(f"--method: {exc}")
    _check_combinations(args, parser, checked["method"])
    _check_numbers(args, parser)
    try:
        checked["baseline"] = Baseline.parse(args.baseline, seed=args.seed)
    except ValueError as exc:
        parser.error(f"--baseline: {exc}")
    checked["method_kwargs"] = _check_method_kwargs(args, parser, checked["method"])
    checked["modalities"] = _modalities(args.modality, parser) if args.modality else None
    checked["windows"] = _windows(args.windows or list(DEFAULT_WINDOWS), parser) if args.ct else None
    _check_files_and_names(args, parser, checked)
    try:
        check_output_dir(args.out)
    except OutputError as exc:
        parser.error(f"--out: {str(exc).removeprefix('out_dir: ')}")
    return checked


def _load(args, checked, parser):
    import torch

    from .case import load_case, load_ct_case
    from .cli_checks import method_kwargs_error, model_run_error
    from .explain import HOOK_METHODS, resolve_layer
    from .models_io import ModelLoadError, load_state_dict_model, load_torchscript, parse_factory_kwargs

    try:
        if args.model:
            model = load_torchscript(args.model)
        else:
            model = load_state_dict_model(args.state_dict, args.factory, parse_factory_kwargs(args.factory_kwargs))
    except ModelLoadError as exc:
        message = str(exc).removeprefix(f"{exc.argument}:").strip()
        parser.error(f"--{exc.argument}: {message}")
    try:
        if args.ct:
            case = load_ct_case(args.ct, checked["windows"], roi=args.roi, foreground=args.foreground)
        else:
            case = load_case(checked["modalities"] or args.image, roi=args.roi, foreground=args.foreground,
                             normalize=args.normalize, names=args.names)
    except ValueError as exc:  # CaseError, or a CT window the kernel refuses
        flag = "--modality" if args.modality else "--image" if args.image else "--ct"
        prefix = str(exc).split(":", 1)[0]
        flag = {"roi": "--roi", "foreground": "--foreground", "names": "--names", "windows": "--windows",
                "normalize='zscore'": "--normalize"}.get(prefix, flag)
        parser.error(f"{flag}: {exc}")
    if checked["method"] in HOOK_METHODS and isinstance(model, torch.jit.ScriptModule):
        parser.error(f"--model: method {checked['method']} needs module hooks, which TorchScript models do not "
                     f"support; pass --state-dict with --factory instead")
    if checked["method"] in ("LayerGradCam", "GuidedGradCam"):
        try:
            resolve_layer(model, args.layer)
        except ValueError as exc:
            parser.error(f"--layer: {exc}")
    if args.slice is not None:
        depth = case.image.shape[-1]
        if case.image.dim() == 3 or not 0 <= args.slice < depth:
            parser.error(f"--slice: must be in [0, {depth}) for this case, got {args.slice}")
    voxels = case.image[0].numel()
    if args.n_segments is not None and args.n_segments > voxels:
        parser.error(f"--n-segments: must be at most the case's {voxels} voxels, got {args.n_segments}")
    _fail(method_kwargs_error(checked["method"], checked["method_kwargs"], case.image.dim()), parser)
    _fail(model_run_error(model, case, args.device, args.target), parser)
    return model, case


def run_explain(args) -> int:
    parser = args.parser
    checked = _check_args(args, parser)
    model, case = _load(args, checked, parser)
    from .explain import explain
    from .outputs import OutputError, check_output_dir, publish_output_set, render_explanation
    from .superpixels import Superpixels

    if args.metrics and (case.roi is None or not bool(case.roi.any())):
        parser.error(f"--roi: the mask {args.roi!r} is empty (no voxel > 0.5); --metrics needs a region")
    superpixels = Superpixels(n_segments=args.n_segments or 200, compactness=args.compactness, joint=args.joint)
    explanation = explain(model, case, method=checked["method"], target=args.target, superpixels=superpixels,
                          baseline=checked["baseline"], layer=args.layer, method_kwargs=checked["method_kwargs"],
                          device=args.device, show_progress=not args.no_progress, seed=args.seed)
    try:  # one output set: the explanation (and its evaluation) all-or-nothing
        files = render_explanation(case, explanation, slice=args.slice, smooth_sigma=args.smooth)
        metrics = _metric_files(model, case, explanation, files, checked, superpixels, args) if args.metrics else None
        check_output_dir(args.out, files)
        written = publish_output_set(args.out, files)
    except OutputError as exc:  # the folder changed while the explanation ran, or clashing file names
        parser.error(f"--out: {str(exc).removeprefix('out_dir: ')}")
    stats = explanation.stats
    print(f"method             {stats.method} (target {explanation.target})")
    print(f"model evaluations  {stats.model_evaluations} ({stats.model_inputs} inputs)")
    print(f"wall time          {stats.wall_s:.2f} s")
    print(f"time in model      {stats.model_s:.2f} s ({100 * stats.model_share:.0f}%)")
    print("modality importance  " + "  ".join(f"{name} {100 * share:.1f}%"
                                             for name, share in explanation.modality_importance.items()))
    if metrics is not None:
        print(f"MSFI {metrics['msfi']:.3f}  localisation {metrics['localisation']:.3f}  modality tau-b "
              f"{metrics['modality_tau_b']:.2f}")
    print(f"wrote {len(written)} files to {args.out}: {', '.join(written)}")
    return 0


def _metric_files(model, case, explanation, files, checked, superpixels, args):
    """Add ``evaluation.json`` and ``curves.png`` (as ``mmxai-fast evaluate`` writes) to ``files``."""
    from ..metrics import evaluate_explanation, plot_curves
    from .outputs import _json_bytes, _png_bytes

    metrics = evaluate_explanation(model, case, explanation, baseline=checked["baseline"], superpixels=superpixels,
                                   seed=args.seed, device=args.device)
    metrics.update(method=explanation.method, baseline=checked["baseline"].describe(),
                   n_segments=superpixels.n_segments)
    figure = plot_curves(metrics, title=f"{explanation.method} (target {metrics['target']})")
    files.update({"evaluation.json": _json_bytes(metrics), "curves.png": _png_bytes(figure)})
    return metrics
