"""``mmxai-fast explain``: NIfTI case + trained model -> heatmaps, importance, figures.

Every argument is checked (files exist, values parse, the model loads, the case loads, the
Grad-CAM layer and slice exist) before the explanation starts; a bad one ends the command with
exit status 2 and one line naming it, argparse-style.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Dict, List

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
    src.add_argument("--modality", nargs="+", metavar="NAME=PATH", help="one NIfTI per modality, e.g. t1=t1.nii.gz flair=flair.nii.gz")
    src.add_argument("--image", metavar="PATH", help="one 4D NIfTI, modalities on the last axis")
    src.add_argument("--ct", metavar="PATH", help="CT volume in HU, expanded into --windows channels")
    case.add_argument("--names", nargs="+", metavar="NAME", help="modality names for --image")
    case.add_argument("--windows", nargs="+", metavar="WINDOW",
                      help="CT windows: preset names or LEVEL:WIDTH (default: brain subdural bone)")
    case.add_argument("--roi", metavar="PATH", help="tumour/ROI mask (chooses the figure's slice)")
    case.add_argument("--foreground", metavar="PATH", help="brain/body mask (default: derived from the intensities)")
    case.add_argument("--normalize", choices=["zscore"], help="per-modality z-score inside the foreground, as the model was trained")
    model = p.add_argument_group("model (--model, or --state-dict with --factory)")
    src_model = model.add_mutually_exclusive_group(required=True)
    src_model.add_argument("--model", metavar="PATH", help="TorchScript file (torch.jit.save)")
    src_model.add_argument("--state-dict", metavar="PATH", help="state dict, loaded with weights_only=True")
    model.add_argument("--factory", metavar="MODULE:CALLABLE", help="builds the model for --state-dict, e.g. mmxai_fast.models:VGG3D")
    model.add_argument("--factory-kwargs", metavar="JSON", help='keyword arguments for --factory, e.g. \'{"in_channels": 4}\'')
    model.add_argument("--device", help="where the model runs (default cpu)")
    method = p.add_argument_group("method")
    method.add_argument("--method", default="ShapleyValueSampling",
                        help=f"one of {', '.join(METHODS)}, or an alias (shapley, ig, gradcam...); "
                             f"default ShapleyValueSampling")
    method.add_argument("--target", type=int, help="class index to explain (default: the model's prediction)")
    method.add_argument("--n-samples", type=int, help="samples/steps of the method (n_samples, nt_samples or n_steps)")
    method.add_argument("--method-kwargs", metavar="JSON", help="more arguments for the method's attribute(), a JSON object")
    method.add_argument("--n-segments", type=int, default=200, help="SLIC superpixels per modality (default 200)")
    method.add_argument("--compactness", type=float, default=0.1, help="SLIC compactness on z-scored intensities (default 0.1)")
    method.add_argument("--joint", action="store_true", help="one superpixel mask shared by all modalities")
    method.add_argument("--baseline", default="zeros", help="removed features become: zeros, gaussian, or a number (default zeros)")
    method.add_argument("--layer", metavar="NAME", help="Grad-CAM layer (default: the last conv layer)")
    method.add_argument("--seed", type=int, default=0, help="seed of the sampling methods and the Gaussian baseline")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, metavar="DIR", help="output folder")
    out.add_argument("--slice", type=int, help="axial slice of the figure (default: largest ROI area, else largest |attribution|)")
    out.add_argument("--smooth", type=float, metavar="SIGMA", help="Gaussian smoothing of the figure's heatmaps, in voxels")
    out.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=run_explain, parser=p)
    return p


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
    from ..ops.hu_window import HU_WINDOW_PRESETS

    windows = []
    for item in items:
        if item in HU_WINDOW_PRESETS:
            windows.append(item)
            continue
        level, sep, width = item.partition(":")
        try:
            windows.append((float(level), float(width)))
            if not sep or float(width) <= 0:
                raise ValueError
        except ValueError:
            parser.error(f"--windows: {item!r} is neither a preset ({', '.join(HU_WINDOW_PRESETS)}) nor LEVEL:WIDTH "
                         f"with WIDTH > 0")
    return windows


def _check_args(args, parser) -> dict:
    """Everything that needs no file reading: syntax, ranges, combinations, file existence."""
    from .baselines import Baseline
    from .explain import check_method_kwargs, resolve_method

    checked = {}
    try:
        checked["method"] = resolve_method(args.method)
    except ValueError as exc:
        parser.error(f"--method: {exc}")
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
    if args.target is not None and args.target < 0:
        parser.error(f"--target: must be >= 0, got {args.target}")
    if args.n_segments < 1:
        parser.error(f"--n-segments: must be >= 1, got {args.n_segments}")
    if not args.compactness > 0:
        parser.error(f"--compactness: must be > 0, got {args.compactness}")
    if args.smooth is not None and args.smooth < 0:
        parser.error(f"--smooth: must be >= 0, got {args.smooth}")
    try:
        checked["baseline"] = Baseline.parse(args.baseline, seed=args.seed)
    except ValueError as exc:
        parser.error(f"--baseline: {exc}")
    kwargs = _json_object(args.method_kwargs, "--method-kwargs", parser) if args.method_kwargs else {}
    if args.n_samples is not None:
        if checked["method"] not in _SAMPLE_ARG:
            parser.error(f"--n-samples: method {checked['method']} takes no sample count "
                         f"(it applies to {', '.join(_SAMPLE_ARG)})")
        if args.n_samples < 1:
            parser.error(f"--n-samples: must be >= 1, got {args.n_samples}")
        kwargs[_SAMPLE_ARG[checked["method"]]] = args.n_samples
    try:
        checked["method_kwargs"] = check_method_kwargs(checked["method"], kwargs)
    except ValueError as exc:
        parser.error(f"--method-kwargs: {exc}")
    if args.device is not None:
        import torch

        try:
            device = torch.device(args.device)
        except RuntimeError:
            parser.error(f"--device: not a torch device: {args.device!r}")
        if device.type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device: {args.device!r} requested but no CUDA device is available")
    checked["modalities"] = _modalities(args.modality, parser) if args.modality else None
    checked["windows"] = _windows(args.windows or list(DEFAULT_WINDOWS), parser) if args.ct else None
    files = [("--image", args.image), ("--ct", args.ct), ("--roi", args.roi), ("--foreground", args.foreground),
             ("--model", args.model), ("--state-dict", args.state_dict)]
    files += [(f"--modality {name}", path) for name, path in (checked["modalities"] or {}).items()]
    for flag, path in files:
        if path is not None and not Path(path).is_file():
            parser.error(f"{flag}: file {path!r} does not exist")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out: {args.out!r} exists and is not a folder")
    return checked


def _load(args, checked, parser):
    from .case import CaseError, load_case, load_ct_case
    import torch

    from .explain import HOOK_METHODS, resolve_layer
    from .models_io import ModelLoadError, load_state_dict_model, load_torchscript, parse_factory_kwargs

    try:
        if args.model:
            model = load_torchscript(args.model)
        else:
            model = load_state_dict_model(args.state_dict, args.factory, parse_factory_kwargs(args.factory_kwargs))
    except ModelLoadError as exc:
        parser.error(f"--{str(exc).split(':')[0]}: {str(exc).split(':', 1)[1].strip()}")
    try:
        if args.ct:
            case = load_ct_case(args.ct, checked["windows"], roi=args.roi, foreground=args.foreground)
        else:
            case = load_case(checked["modalities"] or args.image, roi=args.roi, foreground=args.foreground,
                             normalize=args.normalize, names=args.names)
    except CaseError as exc:
        flag = "--modality" if args.modality else "--image" if args.image else "--ct"
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
    return model, case


def run_explain(args) -> int:
    parser = args.parser
    checked = _check_args(args, parser)
    model, case = _load(args, checked, parser)
    from .explain import explain
    from .outputs import write_explanation
    from .superpixels import Superpixels

    explanation = explain(model, case, method=checked["method"], target=args.target,
                          superpixels=Superpixels(n_segments=args.n_segments, compactness=args.compactness,
                                                  joint=args.joint),
                          baseline=checked["baseline"], layer=args.layer, method_kwargs=checked["method_kwargs"],
                          device=args.device, show_progress=not args.no_progress, seed=args.seed)
    written = write_explanation(case, explanation, args.out, slice=args.slice, smooth_sigma=args.smooth)
    stats = explanation.stats
    print(f"method             {stats.method} (target {explanation.target})")
    print(f"model evaluations  {stats.model_evaluations} ({stats.model_inputs} inputs)")
    print(f"wall time          {stats.wall_s:.2f} s")
    print(f"time in model      {stats.model_s:.2f} s ({100 * stats.model_share:.0f}%)")
    print("modality importance  " + "  ".join(f"{name} {100 * share:.1f}%"
                                             for name, share in explanation.modality_importance.items()))
    print(f"wrote {len(written)} files to {args.out}: {', '.join(written)}")
    return 0
