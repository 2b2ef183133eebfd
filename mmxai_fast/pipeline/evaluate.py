"""``mmxai-fast evaluate``: score an explanation written by ``mmxai-fast explain``.

Reads the ``<modality>_heatmap.nii.gz`` maps and ``summary.json`` of the explanation folder,
loads the case and the model with the same options as ``explain`` (the ROI is required: it is
the MSFI region and the localisation target), and writes ``evaluation.json`` (MSFI, exact
modality Shapley values, Kendall tau-b, localisation, deletion / insertion curves and areas,
delta-AUPC) and ``curves.png`` into ``--out`` (default: the explanation folder), all-or-nothing.
A bad argument ends the command with exit status 2 and one line naming it.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import cast

__all__ = ["add_evaluate_parser", "run_evaluate"]

_CASE_OPTIONS = (("--modality", dict(nargs="+", metavar="NAME=PATH", help="one NIfTI per modality")),
                 ("--image", dict(metavar="PATH", help="one 4D NIfTI, modalities on the last axis")),
                 ("--ct", dict(metavar="PATH", help="CT volume in HU, expanded into --windows")))
_OTHER_OPTIONS = (
    ("--names", dict(nargs="+", metavar="NAME", help="modality names for --image")),
    ("--windows", dict(nargs="+", metavar="WINDOW", help="CT windows (presets or LEVEL:WIDTH)")),
    ("--roi", dict(metavar="PATH", help="tumour/ROI mask (required: MSFI region, localisation)")),
    ("--foreground", dict(metavar="PATH", help="brain/body mask (default: derived from the intensities)")),
    ("--normalize", dict(choices=["zscore"], help="per-modality z-score, as for explain")),
    ("--factory", dict(metavar="MODULE:CALLABLE", help="builds the model for --state-dict")),
    ("--factory-kwargs", dict(metavar="JSON", help="keyword arguments for --factory")),
    ("--device", dict(help="where the model runs (default cpu)")),
    ("--baseline", dict(help="removed features become: zeros, gaussian, blur[:SIGMA], or a number (default: the explanation's)")),
    ("--n-segments", dict(type=int, help="SLIC superpixels per modality for the curves (default: the "
                                          "explanation's, else 200)")),
    ("--steps", dict(type=int, default=20, help="points per curve minus one (default 20)")),
    ("--n-random", dict(type=int, default=4, help="random orders for delta-AUPC (default 4)")),
    ("--seed", dict(type=int, default=0, help="seed of the random orders and the Gaussian baseline")),
    ("--out", dict(metavar="DIR", help="output folder (default: the explanation folder)")),
)


def add_evaluate_parser(sub):
    p = sub.add_parser("evaluate", help="score an explanation folder of `mmxai-fast explain` (MSFI, "
                                        "deletion/insertion, delta-AUPC)", description=__doc__)
    p.add_argument("explanation", metavar="DIR", help="folder written by mmxai-fast explain")
    src = p.add_mutually_exclusive_group(required=True)
    for flag, kwargs in _CASE_OPTIONS:
        src.add_argument(flag, **kwargs)
    models = p.add_mutually_exclusive_group(required=True)
    models.add_argument("--model", metavar="PATH", help="TorchScript file")
    models.add_argument("--state-dict", metavar="PATH", help="state dict, loaded with weights_only=True")
    for flag, kwargs in _OTHER_OPTIONS:
        p.add_argument(flag, **kwargs)
    p.set_defaults(func=run_evaluate, parser=p)
    return p


def _baseline_from_summary(text: str, seed: int):
    """``Baseline.describe()`` back to a Baseline ("zeros", "constant 0.5", "gaussian (seed 3)")."""
    from .baselines import Baseline

    if text.startswith("constant "):
        return Baseline.constant(float(text.split()[1]))
    if text.startswith("gaussian"):
        digits = "".join(c for c in text.split("seed")[-1] if c.isdigit())
        return Baseline.gaussian(int(digits) if digits else seed)
    return Baseline.zeros()


def _read_explanation(folder: Path, parser):
    if not folder.is_dir():
        parser.error(f"DIR: {str(folder)!r} is not a folder written by mmxai-fast explain")
    summary_path = folder / "summary.json"
    if not summary_path.is_file():
        parser.error(f"DIR: {str(folder)!r} has no summary.json (not written by mmxai-fast explain)")
    try:
        summary = json.loads(summary_path.read_text())
    except json.JSONDecodeError as exc:
        parser.error(f"DIR: {summary_path} is not valid JSON ({exc.msg})")
    return summary


def _check(args, parser):
    from .baselines import Baseline

    if args.roi is None:
        parser.error("--roi: required (the tumour/region mask: MSFI's region and the localisation target)")
    if not Path(args.roi).is_file():
        parser.error(f"--roi: file {args.roi!r} does not exist")
    for flag, value, low in (("--steps", args.steps, 1), ("--n-random", args.n_random, 0),
                             ("--n-segments", args.n_segments, 1)):
        if value is not None and value < low:
            parser.error(f"{flag}: must be >= {low}, got {value}")
    summary = _read_explanation(Path(args.explanation), parser)
    if args.baseline is not None:
        try:
            baseline = Baseline.parse(args.baseline, seed=args.seed)
        except ValueError as exc:
            parser.error(f"--baseline: {exc}")
    else:
        baseline = _baseline_from_summary(str(summary.get("settings", {}).get("baseline", "zeros")), args.seed)
    return summary, baseline


def _heatmaps(folder: Path, case, parser):
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage
    import numpy as np
    import torch

    from .outputs import heatmap_filename

    maps = []
    for name in case.modalities:
        path = folder / heatmap_filename(name)
        if not path.is_file():
            parser.error(f"DIR: no heatmap {path.name} for modality {name!r} in {str(folder)!r}")
        data = np.asarray(cast(SpatialImage, nib.load(str(path))).get_fdata(), dtype=np.float32)
        if data.shape != tuple(case.spatial_shape):
            parser.error(f"DIR: {path.name} has shape {data.shape}, the case has {tuple(case.spatial_shape)}")
        maps.append(torch.from_numpy(data))
    return torch.stack(maps)


def run_evaluate(args) -> int:
    from . import cli as explain_cli
    from .outputs import _json_bytes, _png_bytes, write_files_atomically
    from .superpixels import Superpixels

    parser = args.parser
    summary, baseline = _check(args, parser)
    args.layer = args.slice = None
    args.target = summary.get("target")  # _load checks one forward with it
    if args.state_dict and not args.factory:
        parser.error("--factory: required with --state-dict (e.g. mmxai_fast.models:VGG3D)")
    checked = {"method": "FeatureAblation", "method_kwargs": {},
               "modalities": explain_cli._modalities(args.modality, parser) if args.modality else None,
               "windows": explain_cli._windows(args.windows or list(explain_cli.DEFAULT_WINDOWS), parser)
               if args.ct else None}
    model, case = explain_cli._load(args, checked, parser)
    if case.roi is None or not bool(case.roi.any()):
        parser.error(f"--roi: the mask {args.roi!r} is empty (no voxel > 0.5)")
    attributions = _heatmaps(Path(args.explanation), case, parser)
    from ..metrics import evaluate_explanation, plot_curves

    settings = summary.get("settings", {}).get("superpixels", {})
    n_segments = args.n_segments or int(settings.get("n_segments", 200))
    superpixels = Superpixels(n_segments=n_segments, compactness=float(settings.get("compactness", 0.1)),
                              joint=bool(settings.get("joint", False)))
    metrics = evaluate_explanation(model, case, attributions, target=summary.get("target"), baseline=baseline,
                                   superpixels=superpixels, steps=args.steps, n_random=args.n_random,
                                   seed=args.seed, device=args.device)
    metrics.update(method=summary.get("method"), baseline=baseline.describe(), n_segments=n_segments)
    figure = plot_curves(metrics, title=f"{summary.get('method', '')} (target {metrics['target']})")
    out = Path(args.out or args.explanation)
    written = write_files_atomically(out, {"evaluation.json": _json_bytes(metrics), "curves.png": _png_bytes(figure)})
    print(f"MSFI {metrics['msfi']:.3f}  localisation {metrics['localisation']:.3f}  modality tau-b "
          f"{metrics['modality_tau_b']:.2f}")
    if "delta_aupc" in metrics:
        print(f"delta-AUPC deletion {metrics['delta_aupc']['deletion']:.4g}  insertion "
              f"{metrics['delta_aupc']['insertion']:.4g}  ({metrics['n_evaluations']} model evaluations)")
    print(f"wrote {', '.join(written)} to {out}")
    return 0
