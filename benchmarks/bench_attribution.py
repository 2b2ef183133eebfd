"""Captum and mmxai_fast attribution classes side by side, in one process, on the same model,
input and feature mask; writes JSON.

    python benchmarks/bench_attribution.py [--scenarios a,b,c,accuracy] [--quick] [--out PATH]
        [--methods FeatureAblation,Occlusion,...] [--update]

(``--update`` keeps the rows of an existing ``--out`` file that the run does not repeat.)

Every model call of both sides goes through one :class:`TimedModel` (perf_counter around the
forward), so each run reports its wall time, the time spent inside the model, the model calls
and evaluations (examples through the model), and the overhead ``wall - model time``.

Scenarios (a 4-modality brain-like volume made in code, ~50 SLIC supervoxels per modality on
the foreground, ~200 features in all):

- ``a``: a 3D VGG-like classifier (``mmxai_fast.models.VGG3D``) on 4x64x64x64.
- ``b``: the same input with a trivially cheap model (a linear map of the per-channel means),
  which exposes everything outside the model.
- ``c``: the VGG on 4x128x128x128 (Captum on a subset of methods; see ``captum_methods``).
- ``accuracy``: antithetic Shapley sampling (ours) against Captum's plain sampling at equal
  permutations, RMSE against exact Shapley values of a small nonlinear model (10 features).

Targets on the 2-core CPU: in (a) and (c) our overhead is < 5% of our wall time for every
method; in (b) our non-model time is >= 10x lower than Captum's for ShapleyValueSampling,
FeatureAblation and Occlusion; antithetic RMSE < plain RMSE at equal model evaluations.
"""
from __future__ import annotations

import argparse
import os
import json
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).parent))
from _harness import ROW_FIELDS, cpu_facts, environment, row, write_results  # noqa: E402

import captum.attr as captum_attr  # noqa: E402

import mmxai_fast.attr as ours_attr  # noqa: E402
from mmxai_fast.models import VGG3D  # noqa: E402

OVERHEAD_TARGET = 0.05      # (a), (c): our overhead / our wall time
NON_MODEL_TARGET = 10.0     # (b): Captum non-model time / ours
NON_MODEL_METHODS = ("FeatureAblation", "Occlusion", "ShapleyValueSampling")


# ---------------------------------------------------------------------------- input and model

def brain_like_volume(edge: int, modalities: int = 4, seed: int = 0) -> Tuple[Tensor, Tensor]:
    """``[modalities, edge, edge, edge]`` float32 volume and its ``[edge]^3`` bool foreground:
    an ellipsoidal head, smooth per-modality blobs (different contrasts) and Gaussian noise."""
    from scipy.ndimage import gaussian_filter

    rng = np.random.default_rng(seed)
    axis = np.linspace(-1, 1, edge, dtype=np.float32)
    z, y, x = np.meshgrid(axis, axis, axis, indexing="ij")
    radius = (z / 0.80) ** 2 + (y / 0.90) ** 2 + (x / 0.75) ** 2
    foreground = radius < 1.0
    sigma = edge / 16
    volume = np.empty((modalities, edge, edge, edge), dtype=np.float32)
    tissue = gaussian_filter(rng.standard_normal((edge,) * 3).astype(np.float32), sigma)
    for m in range(modalities):
        blobs = gaussian_filter(rng.standard_normal((edge,) * 3).astype(np.float32), sigma / 2)
        contrast = (1.0 + 0.3 * m) * tissue / (tissue.std() + 1e-6) + 0.7 * blobs / (blobs.std() + 1e-6)
        volume[m] = np.where(foreground, 1.0 + 0.25 * contrast, 0.0) + 0.05 * rng.standard_normal((edge,) * 3)
    return torch.from_numpy(volume), torch.from_numpy(foreground)


def supervoxel_mask(volume: Tensor, foreground: Tensor, per_modality: int, seed: int = 0) -> Tensor:
    """``[1, C, D, H, W]`` int64 feature ids: skimage SLIC per modality on the foreground (each
    modality its own labels), ids offset per modality; the background is one shared feature 0."""
    from skimage.segmentation import slic

    ids = np.zeros(tuple(volume.shape), dtype=np.int64)
    fg = foreground.numpy()
    offset = 0
    for m in range(volume.shape[0]):
        labels = slic(volume[m].numpy().astype(np.float64), n_segments=per_modality, compactness=0.1,
                      channel_axis=None, mask=fg, start_label=1)
        _, dense = np.unique(labels, return_inverse=True)  # 0 = background (label 0), then 1..k
        dense = dense.reshape(labels.shape)
        ids[m] = np.where(fg, dense + offset, 0)
        offset += int(dense.max())
    return torch.from_numpy(ids).unsqueeze(0)


class CheapModel(nn.Module):
    """A trivially cheap classifier: a linear map of the per-channel means (reads the input once)."""

    def __init__(self, in_channels: int = 4, num_classes: int = 2) -> None:
        super().__init__()
        self.linear = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(x.flatten(2).mean(-1))


class TimedModel(nn.Module):
    """Wraps a model; counts calls and evaluations (examples) and sums the forward time."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.reset()

    def reset(self) -> None:
        self.calls, self.evaluations, self.seconds = 0, 0, 0.0

    def forward(self, x: Tensor) -> Tensor:
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.evaluations += x.shape[0]
        return out


# ---------------------------------------------------------------------------- scenarios

@dataclass
class Scenario:
    name: str
    edge: int
    model: str                      # "vgg" or "cheap"
    per_modality: int = 50          # SLIC segments per modality
    n_samples: int = 2              # Shapley permutations (even: antithetic needs pairs)
    lime_samples: int = 64
    perturbations_per_eval: int = 16
    window: Tuple[int, ...] = (4, 16, 16, 16)
    repeats: int = 1
    methods: Tuple[str, ...] = ("FeatureAblation", "Occlusion", "ShapleyValueSampling",
                                "ShapleyValueSampling(antithetic)", "FeaturePermutation", "Lime", "KernelShap")
    captum_methods: Optional[Tuple[str, ...]] = None  # None: all of ``methods``
    vgg_widths: Tuple[int, ...] = (16, 32, 64, 128)
    notes: List[str] = field(default_factory=list)


def scenarios(quick: bool) -> Dict[str, Scenario]:
    if quick:
        tiny = dict(edge=16, per_modality=5, n_samples=2, lime_samples=8, perturbations_per_eval=4,
                    window=(4, 8, 8, 8), vgg_widths=(4, 8))
        return {"a": Scenario("a", model="vgg", **tiny), "b": Scenario("b", model="cheap", repeats=2, **tiny),
                "c": Scenario("c", model="vgg", **{**tiny, "edge": 24},
                              captum_methods=("FeatureAblation", "Occlusion"))}
    # The 2-core machine is shared: (a) leaves FeaturePermutation (2 examples, twice the model
    # time) to (b); (c) uses ~8 supervoxels per modality and 8 perturbations per call so one run
    # takes minutes, not an hour (the overhead share is a per-call property).
    every = ("FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValueSampling(antithetic)",
             "Lime", "KernelShap")
    return {
        "a": Scenario("a", edge=64, model="vgg", methods=every, lime_samples=256,
                      notes=["FeaturePermutation is measured in (b) only (it needs 2 examples: twice the model "
                             "time on this shared 2-core machine)"]),
        "b": Scenario("b", edge=64, model="cheap"),
        "c": Scenario("c", edge=128, model="vgg", per_modality=8, perturbations_per_eval=8, window=(4, 32, 32, 32),
                      lime_samples=32,
                      methods=("FeatureAblation", "Occlusion", "ShapleyValueSampling(antithetic)", "KernelShap"),
                      captum_methods=("FeatureAblation", "Occlusion"),
                      notes=["~8 SLIC supervoxels per modality (not ~50) and 8 perturbations per model call, "
                             "Captum on FeatureAblation and Occlusion only: at 4x128^3 a model call on this "
                             "shared 2-core CPU takes seconds to tens of seconds, and the overhead share is a "
                             "per-call property"]),
    }


def method_calls(sc: Scenario, x: Tensor, mask: Tensor, x_many: Tensor, mask_many: Tensor):
    """name -> (class name, attribute kwargs builder, needs N>1, torch seed or None)."""
    ppe = sc.perturbations_per_eval
    common = dict(target=1, perturbations_per_eval=ppe)
    return {
        "FeatureAblation": ("FeatureAblation", lambda: dict(inputs=x, feature_mask=mask, **common), None),
        "Occlusion": ("Occlusion", lambda: dict(inputs=x, sliding_window_shapes=sc.window, strides=sc.window,
                                                 **common), None),
        "ShapleyValueSampling": ("ShapleyValueSampling",
                                 lambda: dict(inputs=x, feature_mask=mask, n_samples=sc.n_samples, **common), 0),
        "ShapleyValueSampling(antithetic)": ("ShapleyValueSampling",
                                             lambda: dict(inputs=x, feature_mask=mask, n_samples=sc.n_samples,
                                                          **common), 0),
        "FeaturePermutation": ("FeaturePermutation",
                               lambda: dict(inputs=x_many, feature_mask=mask_many, **common), 0),
        "Lime": ("Lime", lambda: dict(inputs=x, feature_mask=mask, n_samples=sc.lime_samples, **common), 0),
        "KernelShap": ("KernelShap", lambda: dict(inputs=x, feature_mask=mask, n_samples=sc.lime_samples,
                                                  **common), 0),
    }


def timed_runs(run: Callable[[], Tensor], model: TimedModel, seed: Optional[int], repeats: int):
    """One warm-up-free call per repeat (the caller warms the model up); median over repeats."""
    walls, model_s, result = [], [], None
    for _ in range(repeats):
        if seed is not None:
            torch.manual_seed(seed)
        model.reset()
        start = time.perf_counter()
        result = run()
        walls.append(time.perf_counter() - start)
        model_s.append(model.seconds)
    overheads = [w - m for w, m in zip(walls, model_s)]
    wall = statistics.median(walls)
    over = statistics.median(overheads)
    return result, dict(wall_s=wall, model_s=statistics.median(model_s), overhead_s=over,
                        overhead_pct=100 * over / wall, model_calls=model.calls,
                        model_evaluations=model.evaluations, repeats=repeats,
                        wall_iqr_s=_iqr(walls), overhead_iqr_s=_iqr(overheads))


def _iqr(values: List[float]) -> float:
    if len(values) < 2:
        return 0.0
    q = statistics.quantiles(values, n=4)
    return q[2] - q[0]


def warm_up(methods) -> None:
    """Run every method of both sides once on a tiny problem: first-call costs (lazy imports, the
    compiled extension's load, backend resolution) stay out of the timed runs."""
    sc = Scenario("warm-up", edge=8, model="cheap", per_modality=2, perturbations_per_eval=2, window=(4, 4, 4, 4),
                  lime_samples=4, vgg_widths=(2,))
    x = torch.rand(1, 4, 8, 8, 8)
    mask = (torch.arange(4).reshape(1, 4, 1, 1, 1) + torch.zeros(1, 4, 8, 8, 8, dtype=torch.int64))
    model = CheapModel().eval()
    for name, (cls, kwargs, _) in method_calls(sc, x, mask, torch.cat([x, x]), mask).items():
        for side in (ours_attr, captum_attr):
            if name in methods and getattr(side, cls, None) is not None:
                getattr(side, cls)(model).attribute(**kwargs())


def run_scenario(sc: Scenario, log=print) -> List[dict]:
    torch.manual_seed(0)
    warm_up(sc.methods)
    volume, foreground = brain_like_volume(sc.edge)
    mask = supervoxel_mask(volume, foreground, sc.per_modality)
    num_features = int(mask.max()) + 1
    x = volume.unsqueeze(0)
    x_many = torch.cat([x, brain_like_volume(sc.edge, seed=1)[0].unsqueeze(0)])
    mask_many = mask  # shared by both examples
    core = (VGG3D(widths=sc.vgg_widths).eval().to(memory_format=torch.channels_last_3d)
            if sc.model == "vgg" else CheapModel().eval())
    model = TimedModel(core)
    with torch.no_grad():  # warm-up at the evaluated batch size
        model(x.expand(sc.perturbations_per_eval, *x.shape[1:]).contiguous())
    log(f"scenario {sc.name}: input {tuple(x.shape)}, {num_features} features, model {sc.model}")
    rows = []
    captum_methods = sc.captum_methods if sc.captum_methods is not None else sc.methods
    for name, (cls, kwargs, seed) in method_calls(sc, x, mask, x_many, mask_many).items():
        if name not in sc.methods:
            continue
        ours_cls = getattr(ours_attr, cls, None)
        if ours_cls is None:
            log(f"  {name}: not in mmxai_fast.attr yet, skipped")
            continue
        extra = dict(antithetic=True) if name.endswith("(antithetic)") else {}
        row = dict(scenario=sc.name, method=name, input_shape=list(x.shape), num_features=num_features,
                   model=sc.model, perturbations_per_eval=sc.perturbations_per_eval)
        ours_out, row["ours"] = timed_runs(lambda: ours_cls(model).attribute(**kwargs(), **extra),
                                           model, seed, sc.repeats)
        plain = next((r for r in rows if r["method"] == "ShapleyValueSampling" and "captum" in r), None)
        if extra and plain is not None:  # Captum has no antithetic option: its plain run, measured above
            row["captum"] = dict(plain["captum"])
            row["captum_note"] = "Captum's plain sampling at the same n_samples (the ShapleyValueSampling row)"
        elif name in captum_methods:
            captum_out, row["captum"] = timed_runs(lambda: getattr(captum_attr, cls)(model).attribute(**kwargs()),
                                                   model, seed, sc.repeats)
            row["captum_note"] = ("Captum's plain sampling at the same n_samples" if extra else None)
            if not extra:
                row["max_abs_diff"] = float((ours_out.double() - captum_out.double()).abs().max())
                row["max_abs_attr"] = float(captum_out.double().abs().max())
                row["equal_at_same_seed_expected"] = name not in ("Lime", "KernelShap")
        if "captum" in row:
            row["non_model_ratio"] = row["captum"]["overhead_s"] / max(row["ours"]["overhead_s"], 1e-9)
            row["wall_ratio"] = row["captum"]["wall_s"] / row["ours"]["wall_s"]
        row.update(_targets(sc, row))
        rows.append(row)
        log("  " + format_row(row))
    return rows


def _targets(sc: Scenario, row: dict) -> dict:
    if sc.model == "vgg":
        return dict(target="overhead < 5% of wall", target_met=row["ours"]["overhead_pct"] < 100 * OVERHEAD_TARGET)
    if row["method"] in NON_MODEL_METHODS and "captum" in row:
        return dict(target=">= 10x less non-model time than Captum",
                    target_met=row["non_model_ratio"] >= NON_MODEL_TARGET)
    return dict(target=None, target_met=None)


# ---------------------------------------------------------------------------- accuracy

class SmallNonlinear(nn.Module):
    """A cheap nonlinear model of 10 scalar features with interactions."""

    def __init__(self, features: int = 10, hidden: int = 16, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(features, hidden, generator=g, dtype=torch.float64))
        self.w2 = nn.Parameter(torch.randn(hidden, 1, generator=g, dtype=torch.float64) / hidden ** 0.5)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.tanh(x @ self.w1)
        return (h @ self.w2).squeeze(-1) + 0.5 * torch.sin(x[:, 0] * x[:, 1])


def exact_shapley(model: nn.Module, x: Tensor) -> Tensor:
    """Shapley values by enumerating all ``2^F`` coalitions (baseline 0), float64."""
    features = x.shape[1]
    coalitions = torch.tensor([[(s >> f) & 1 for f in range(features)] for s in range(2 ** features)],
                              dtype=torch.bool)
    with torch.no_grad():
        values = model(torch.where(coalitions, x, torch.zeros((), dtype=x.dtype)))
    phi = torch.zeros(features, dtype=torch.float64)
    for f in range(features):
        without = ~coalitions[:, f]
        size = coalitions[without].sum(1)
        weight = torch.tensor([math.factorial(int(s)) * math.factorial(features - int(s) - 1)
                               for s in size], dtype=torch.float64) / math.factorial(features)
        with_f = torch.nonzero(without).squeeze(1) + (1 << f)
        phi[f] = (weight * (values[with_f] - values[without])).sum()
    return phi


def accuracy_study(quick: bool, log=print) -> dict:
    features = 10
    model = SmallNonlinear(features)
    x = torch.randn(1, features, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 1.5
    exact = exact_shapley(model, x)
    seeds = range(5 if quick else 50)
    budgets = (4,) if quick else (2, 4, 10, 20)
    study = dict(features=features, seeds=len(seeds), model="tanh MLP + sin(x0*x1), float64", budgets=[])
    for n_samples in budgets:
        errors = {"captum_plain": [], "ours_antithetic": [], "ours_plain": []}
        evals = {}
        for seed in seeds:
            for key, cls, extra in (("captum_plain", captum_attr.ShapleyValueSampling, {}),
                                    ("ours_antithetic", ours_attr.ShapleyValueSampling, dict(antithetic=True)),
                                    ("ours_plain", ours_attr.ShapleyValueSampling, {})):
                timed = TimedModel(model)
                torch.manual_seed(seed)
                attr = cls(timed).attribute(x, n_samples=n_samples, perturbations_per_eval=64, **extra)
                errors[key].append(float(((attr.squeeze(0) - exact) ** 2).mean().sqrt()))
                evals[key] = timed.evaluations
        entry = dict(n_samples=n_samples, model_evaluations=evals)
        for key, errs in errors.items():
            entry[f"{key}_rmse_mean"] = statistics.mean(errs)
            entry[f"{key}_rmse_std"] = statistics.stdev(errs) if len(errs) > 1 else 0.0
        entry["antithetic_better"] = entry["ours_antithetic_rmse_mean"] < entry["captum_plain_rmse_mean"]
        study["budgets"].append(entry)
        log(f"  accuracy n_samples={n_samples}: RMSE captum plain {entry['captum_plain_rmse_mean']:.4f} "
            f"+- {entry['captum_plain_rmse_std']:.4f} ({evals['captum_plain']} evals), ours antithetic "
            f"{entry['ours_antithetic_rmse_mean']:.4f} +- {entry['ours_antithetic_rmse_std']:.4f} "
            f"({evals['ours_antithetic']} evals)")
    study["target_met"] = all(b["antithetic_better"] for b in study["budgets"])
    return study


# ---------------------------------------------------------------------------- report

def format_row(row: dict) -> str:
    ours = row["ours"]
    cap = row.get("captum")
    cap_txt = (f"{cap['wall_s']:8.2f} {cap['model_s']:8.2f} {cap['overhead_s']:8.3f}" if cap
               else f"{'-':>8s} {'-':>8s} {'-':>8s}")
    ratio = f"{row['non_model_ratio']:7.1f}x" if cap else f"{'-':>8s}"
    met = {True: "yes", False: "MISSED", None: ""}[row.get("target_met")]
    return (f"{row['method']:34s} {row['scenario']:>3s} {cap_txt} {ours['wall_s']:8.2f} {ours['model_s']:8.2f} "
            f"{ours['overhead_s']:8.3f} {ours['overhead_pct']:6.1f}% {ratio} {met:>6s}")


HEADER = (f"{'method':34s} {'sc':>3s} {'cap wall':>8s} {'cap mdl':>8s} {'cap ovh':>8s} {'our wall':>8s} "
          f"{'our mdl':>8s} {'our ovh':>8s} {'ovh %':>7s} {'non-mdl':>8s} {'target':>6s}")


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenarios", default="a,b,c,accuracy",
                        help="comma-separated subset of a,b,c,accuracy (default: all)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke run, < 1 minute)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attribution_cpu_2core.json"))
    parser.add_argument("--methods", default=None, help="comma-separated subset of the methods (default: all)")
    parser.add_argument("--update", action="store_true",
                        help="keep the results of an existing --out file that this run does not repeat")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.scenarios.split(",") if s.strip()]
    methods = None if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    known = scenarios(args.quick)
    unknown = [s for s in chosen if s not in known and s != "accuracy"]
    if unknown:
        parser.error(f"--scenarios must be a subset of a,b,c,accuracy, got {unknown}")
    print(HEADER)
    load_before = os.getloadavg()
    payload = dict(environment=environment(torch.device("cpu")), cpu=cpu_facts(load_before),
                   command=" ".join(["python", "benchmarks/bench_attribution.py"] + (argv if argv is not None
                                                                                      else sys.argv[1:])),
                   quick=args.quick, scenarios={n: asdict(known[n]) for n in chosen if n in known},
                   targets=dict(overhead_pct_below=100 * OVERHEAD_TARGET, non_model_ratio_at_least=NON_MODEL_TARGET,
                                non_model_methods=list(NON_MODEL_METHODS)),
                   rows=[], accuracy=None, complete=False)
    if args.update and args.out.exists():
        previous_file = json.loads(args.out.read_text())
        previous = {**previous_file.get("meta", {}), "rows": previous_file.get("rows", [])}
        kept = [r for r in previous["rows"]
                if r["scenario"] not in chosen or (methods is not None and r["method"] not in methods)]
        payload["rows"] = kept
        payload["accuracy"] = None if "accuracy" in chosen else previous.get("accuracy")
        payload["scenarios"] = {**{k: v for k, v in previous.get("scenarios", {}).items() if k not in chosen},
                                **payload["scenarios"]}
        payload["kept_from_previous_run"] = dict(
            scenarios=sorted({r["scenario"] for r in kept} | ({"accuracy"} if payload["accuracy"] else set())),
            command=previous.get("command"), commit=previous.get("environment", {}).get("commit"))
    for name in chosen:
        if name == "accuracy":
            payload["accuracy"] = accuracy_study(args.quick)
        else:
            scenario = known[name]
            if methods is not None:
                scenario.methods = tuple(m for m in scenario.methods if m in methods)
            payload["rows"].extend(run_scenario(scenario))
            order = list(known) + ["accuracy"]
            payload["rows"].sort(key=lambda r: order.index(r["scenario"]))
        written = _write(args.out, payload, load_before)  # after every scenario: a long run keeps what it measured
    payload["complete"] = True
    written = _write(args.out, payload, load_before)
    print("\n" + HEADER)
    for r in written["rows"]:
        print(format_row(r))
    print(f"wrote {args.out}")
    return written


def schema_row(record: dict) -> dict:
    """One (scenario, method) record as a results row: mmxai_fast's wall time, Captum's (nested
    under ``captum``) as the comparison (``ratio`` = Captum's wall / ours)."""
    rest = {k: v for k, v in record.items() if k not in ROW_FIELDS}
    ours = rest["ours"]
    case = f"scenario {rest['scenario']}: {rest['model']} {'x'.join(map(str, rest['input_shape']))} F={rest['num_features']}"
    return row(rest["method"], "mmxai_fast", case, device="cpu", dtype="float32", median_s=ours["wall_s"],
               iqr_s=ours.get("wall_iqr_s") if ours.get("repeats", 1) > 1 else None, ratio=rest.get("wall_ratio"),
               commit=record.get("commit"), versions=record.get("versions"), **rest)


def _write(path: Path, payload: dict, load_before) -> dict:
    meta = {k: v for k, v in payload.items() if k != "rows"}
    meta["cpu"] = cpu_facts(load_before)
    return write_results(path, [schema_row(r) for r in payload["rows"]], meta)


if __name__ == "__main__":
    main()
