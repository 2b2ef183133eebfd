"""Shapley estimators: error against model evaluations on games with known answers (issue 13).

The game: a small 3D CNN (VGG3D, seeded) on a 4-sequence brain phantom cut into F SLIC
superpixels (12-16); removed superpixels take 0. Its exact Shapley values come from all 2^F
coalitions evaluated through the engine (:func:`mmxai_fast.estimators.evaluate_coalitions`). The
estimators then play a lookup table of those outputs (the same game, bit for bit, without paying
for the CNN again), so that every method and budget runs over many seeds:

- Captum 0.9's ShapleyValueSampling (n_samples orders, ``n_samples * F + 1`` evaluations) and
  KernelShap, given a model that reads the table;
- ours: permutation, antithetic, leverage, regression_adjusted, stratified (mmxai_fast.estimators);
- shapiq's KernelSHAP (plain and with pairing + leverage size weights, i.e. Leverage SHAP),
  PermutationSamplingSV, SVARM, StratifiedSamplingSV, UnbiasedKernelSHAP, when importable
  (``pip install shapiq``; the bench extra), else the column is skipped with a note.

Reported per method and budget: RMSE over features and seeds, and the mean over seeds of the max
abs error. Targets: (1) the RMSE of Captum's ShapleyValueSampling at n_samples=25 reached with at
most 1/5 of its evaluations; (2) at equal evaluations leverage / regression_adjusted no worse
than shapiq's best regression estimator; (3) wall time per model evaluation of our estimators on
the real CNN within 5% of FeatureAblation's (same chunk size, interleaved repeats, one run).

The large game (``--large-features``, default 200): the same CNN over ~200 superpixels, where
enumeration is impossible. To make its reference cheap (minutes, not hours) the phantom is
average-pooled to 12^3 (``--large-downsample 2`` of a 24^3 phantom; ~0.3 ms per evaluation in
batches of 256 on one core instead of ~4 ms at 24^3); the reference is one long antithetic run
(``--reference-evaluations``, default 200,000) whose own standard errors are reported
(``large_game.reference.rms_stderr``: the error floor, drawn in the plot), and every estimator
runs at 2F, 5F, 10F (and 25F without ``--quick``) evaluations on the CNN itself, over
``--large-seeds`` (default 20) seeds.

    python benchmarks/bench_estimators.py --quick --large-features 0   # 12 superpixels, 20 seeds, no large game
    python benchmarks/bench_estimators.py --quick --skip-small         # then the large game (keeps the small one)
    python benchmarks/bench_estimators.py                              # 16 superpixels, 30 seeds, large game 4 budgets
    (shapiq: ``pip install --target DIR shapiq`` and ``--extra-path DIR``)
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import cpu_facts, environment, row, write_results  # noqa: E402

from mmxai_fast.estimators import ModelGame, ShapleyEstimator, estimate_shapley  # noqa: E402
from mmxai_fast.estimators._game import all_subsets, shapley_coefficients  # noqa: E402

#: Copies per model call in the large game (measured fastest for the 12^3 VGG3D on this CPU).
LARGE_CHUNK = 256
OURS = ("permutation", "antithetic", "leverage", "regression_adjusted", "stratified")


def build_game(num_features: int, size: int, seed: int = 0, downsample: int = 1, widths=(4, 8)):
    """(ModelGame of the CNN over ~num_features superpixels, model, input, mask). ``downsample``
    average-pools the phantom (a cheaper game: the large game's long reference run)."""
    import torch.nn.functional as nnf

    from mmxai_fast.models import VGG3D
    from mmxai_fast.ops import slic
    from mmxai_fast.phantom import make_phantom_dataset

    images, _, phantoms = make_phantom_dataset(2, (size, size, size), seed=seed, show_progress=False)
    x = images[1:2]  # a high-grade case (grades alternate)
    head = phantoms[1].head
    if downsample > 1:
        x = nnf.avg_pool3d(x, downsample)
        head = nnf.max_pool3d(head[None, None].float(), downsample)[0, 0] > 0
    best = None
    for scale in (1.0, 0.9, 0.8, 0.85, 0.95, 0.75, 1.1):  # SLIC gives about n_segments: keep the closest
        labels = slic(x[0, 1].contiguous(), n_segments=max(2, round(scale * num_features)), compactness=0.1,
                      mask=head, channel_axis=None)
        ids = torch.unique(labels, return_inverse=True)[1]  # 0 = background becomes a feature too
        if best is None or abs(int(ids.max()) + 1 - num_features) < abs(int(best.max()) + 1 - num_features):
            best = ids
        if abs(int(best.max()) + 1 - num_features) <= max(1, num_features // 50):
            break
    ids = best
    torch.manual_seed(seed)
    model = VGG3D(in_channels=4, num_classes=2, widths=widths, hidden=8, pool="max").eval()
    mask = ids.view(1, 1, *ids.shape)
    return ModelGame(model, x, 0.0, mask, target=1), model, x, mask


class TableGame:
    """A game given by all its 2^F values (index = bit code of the coalition)."""

    def __init__(self, table: torch.Tensor, num: int):
        self.table, self.num = table, num
        self.bits = 2 ** torch.arange(num)
        self.calls = 0

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls += rows.shape[0]
        return self.table[(rows.long().cpu() * self.bits).sum(-1)].to(torch.float64)

    def model(self, x: torch.Tensor) -> torch.Tensor:
        """Captum-style model: ``[B, F]`` inputs in {0, 1} -> ``[B]``."""
        return self(x > 0.5)


class ModelRowsGame(TableGame):
    """The CNN itself as a game (no table: F is too large to enumerate), with TableGame's interface."""

    def __init__(self, model_game: ModelGame):
        self.model_game, self.num = model_game, model_game.num_features
        self.calls = 0

    def __call__(self, rows: torch.Tensor) -> torch.Tensor:
        self.calls += rows.shape[0]
        return self.model_game(rows.bool()).cpu()


def captum_runs(game: TableGame, method: str, budgets, seeds):
    from captum.attr import KernelShap, ShapleyValueSampling

    x = torch.ones(1, game.num, dtype=torch.float64)
    mask = torch.arange(game.num).view(1, -1)
    out = {}
    for budget in budgets:
        estimates, calls = [], []
        for seed in seeds:
            torch.manual_seed(seed)
            game.calls = 0
            if method == "captum_svs":
                attr = ShapleyValueSampling(game.model).attribute(x, baselines=0.0, feature_mask=mask, n_samples=budget,
                                                                  perturbations_per_eval=game.num)
            else:
                attr = KernelShap(game.model).attribute(x, baselines=0.0, feature_mask=mask, n_samples=budget,
                                                        perturbations_per_eval=64)
            estimates.append(attr[0].double())
            calls.append(game.calls)
        out[budget] = (torch.stack(estimates), int(np.median(calls)))
    return out


def our_runs(game: TableGame, method: str, budgets, seeds):
    out = {}
    for budget in budgets:
        runs = [estimate_shapley(game, game.num, method, n_evaluations=budget, seed=s) for s in seeds]
        out[budget] = (torch.stack([r.values for r in runs]), int(np.median([r.n_evaluations for r in runs])))
    return out


def shapiq_runs(game: TableGame, method: str, budgets, seeds):
    import shapiq

    n = game.num
    leverage = np.ones(n + 1)
    makers = {
        "shapiq_kernelshap": lambda s: shapiq.approximator.KernelSHAP(n, random_state=s),
        "shapiq_leverage": lambda s: shapiq.approximator.KernelSHAP(n, pairing_trick=True, sampling_weights=leverage,
                                                                    random_state=s),
        "shapiq_permutation": lambda s: shapiq.approximator.PermutationSamplingSV(n, random_state=s),
        "shapiq_svarm": lambda s: shapiq.approximator.SVARM(n, random_state=s),
        "shapiq_stratified": lambda s: shapiq.approximator.StratifiedSamplingSV(n, random_state=s),
        "shapiq_unbiased_kernelshap": lambda s: shapiq.approximator.UnbiasedKernelSHAP(n, random_state=s),
    }

    def np_game(coalitions):
        return game(torch.from_numpy(np.atleast_2d(np.asarray(coalitions, dtype=bool)))).numpy()
    out = {}
    for budget in budgets:
        estimates, calls = [], []
        for seed in seeds:
            game.calls = 0
            values = makers[method](seed).approximate(budget, np_game)
            estimates.append(torch.tensor([float(values[(i,)]) for i in range(n)], dtype=torch.float64))
            calls.append(game.calls)
        out[budget] = (torch.stack(estimates), int(np.median(calls)))
    return out


def errors(estimates: torch.Tensor, exact: torch.Tensor):
    err = estimates - exact
    return float(err.square().mean().sqrt()), float(err.abs().amax(1).mean())


def time_per_evaluation(game: ModelGame, model, x, mask, repeats: int):
    """Median seconds per model evaluation of FeatureAblation and of each of our estimators (same
    chunk size; interleaved so that both see the same load)."""
    from mmxai_fast.attr import FeatureAblation

    num = game.num_features
    chunk = 16
    budget = 4 * num
    timings = {name: [] for name in ("FeatureAblation",) + OURS}

    def run_ablation():
        FeatureAblation(model).attribute(x, target=1, feature_mask=mask.expand_as(x), perturbations_per_eval=chunk)
        return num + 1
    for repeat in range(repeats + 1):
        for name in timings:
            start = time.perf_counter()
            if name == "FeatureAblation":
                count = run_ablation()
            else:
                estimator = ShapleyEstimator(model, method=name)
                estimator.attribute(x, target=1, feature_mask=mask, n_evaluations=budget, seed=repeat,
                                    perturbations_per_eval=chunk)
                count = estimator.last_n_evaluations
            if repeat:  # the first round warms up
                timings[name].append((time.perf_counter() - start) / count)
    base = statistics.median(timings["FeatureAblation"])
    return {name: {"median_s_per_evaluation": statistics.median(t), "ratio_to_feature_ablation":
                   statistics.median(t) / base} for name, t in timings.items()}


def _plot_curves(ax, results, title: str) -> None:
    for name, curve in results.items():
        style = "-" if name in OURS else ("--" if name.startswith("captum") else ":")
        ax.plot([c["evaluations"] for c in curve], [c["rmse"] for c in curve], style, marker="o", ms=3, label=name)
    ax.set_xscale("log")
    ax.set_yscale("log")
    medians = [statistics.median(c["rmse"] for c in curve) for curve in results.values() if curve]
    top = 5 * max(medians)  # a failed solve (shapiq's Leverage SHAP at F - 1 pairs: 1e5) would flatten the rest
    if any(c["rmse"] > top for curve in results.values() for c in curve):
        ax.set_ylim(top=top)
        title += " (points above the top clipped)"
    ax.set_xlabel("model evaluations")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=6, ncol=2)


def plot(results, game: dict, large: Optional[dict], path: Path) -> None:
    """Error against evaluations: the small game (exact values) and, when run, the large one
    (reference from a long antithetic run; its RMS standard error drawn as the floor)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = 2 if large else 1
    fig, axes = plt.subplots(1, panels, figsize=(7.5 * panels, 4.8), layout="constrained", squeeze=False)
    ax = axes[0, 0]
    _plot_curves(ax, results, f"VGG3D, {game['features']} superpixels (exact by enumeration)")
    ax.set_ylabel("RMSE against exact Shapley values")
    ax.axvline(game["exact_evaluations"], color="k", lw=0.5)
    if large:
        ax = axes[0, 1]
        ref = large["reference"]
        _plot_curves(ax, large["results"], f"VGG3D, {large['features']} superpixels, {large['seeds']} seeds; reference: "
                     f"antithetic, {ref['evaluations']} evaluations")
        ax.set_ylim(bottom=min(ax.get_ylim()[0], ref["rms_stderr"] / 2))
        ax.axhline(ref["rms_stderr"], color="k", lw=0.8, ls="-.")
        ax.text(ax.get_xlim()[0], ref["rms_stderr"], " reference's own RMS stderr", fontsize=7, va="bottom")
        ax.set_ylabel("RMSE against the reference")
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="12 superpixels, 20 seeds, fewer budgets")
    parser.add_argument("--features", type=int, help="superpixels (default 16, --quick 12)")
    parser.add_argument("--seeds", type=int, help="seeds per point (default 30, --quick 20)")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "estimators.json"))
    parser.add_argument("--extra-path", action="append", default=[],
                        help="folder appended to sys.path (e.g. a `pip install --target` with shapiq)")
    parser.add_argument("--large-features", type=int, default=200,
                        help="superpixels of the large game (default 200; 0 skips it)")
    parser.add_argument("--large-size", type=int, default=24, help="phantom edge of the large game (default 24)")
    parser.add_argument("--large-downsample", type=int, default=2,
                        help="average-pooling factor of the large game's phantom (default 2: a 12^3 volume)")
    parser.add_argument("--large-seeds", type=int, default=20, help="seeds per point on the large game (default 20)")
    parser.add_argument("--reference-evaluations", type=int, default=200_000,
                        help="evaluations of the large game's antithetic reference (default 200000)")
    parser.add_argument("--large-from", help="take the large game's results from this earlier output (a run "
                                             "with --skip-small) instead of running it")
    parser.add_argument("--skip-small", action="store_true", help="only the large game (keeps the small game's "
                                                                   "results of an existing --out file)")
    args = parser.parse_args(argv)
    sys.path.extend(args.extra_path)
    load_before = os.getloadavg()
    out = Path(args.out)
    command = " ".join(["python benchmarks/bench_estimators.py"] + list(sys.argv[1:] if argv is None else argv))
    # each game keeps the CPU facts (load) and the command of the run that measured it
    if args.skip_small:
        before = json.loads(out.read_text())["meta"]
        small = before["small_game"]
        small.setdefault("cpu", before["cpu"])
        small.setdefault("command", before["command"])
    else:
        small = small_game(args)
        small["cpu"], small["command"] = cpu_facts(load_before), command
    if args.large_from:
        before = json.loads(Path(args.large_from).read_text())["meta"]
        large = before["large_game"]
        large.setdefault("cpu", before["cpu"])
        large.setdefault("command", before["command"])
    elif args.large_features:
        load_large = os.getloadavg()
        large = large_game(args, list(range(args.large_seeds)))
        large["cpu"], large["command"] = cpu_facts(load_large), command
    else:
        large = None
    game = small["game"]
    rows = schema_rows(small["results"], small["time_per_evaluation"], f"VGG3D {game['size']}^3 F={game['features']}",
                       small["seeds"])
    if large:
        rows += schema_rows(large["results"], {}, f"VGG3D {large['size']}^3 F={large['features']}", large["seeds"])
    if large:
        large["target_vs_shapiq"] = target_vs_shapiq(large["results"])
    meta = {"environment": environment(torch.device("cpu")), "cpu": cpu_facts(load_before), "command": command,
            "small_game": small, "large_game": large}
    write_results(out, rows, meta)
    plot(small["results"], small["game"], large, out.with_suffix(".png"))
    _report(small["results"], small["target_captum_svs25"]["captum"], small["target_captum_svs25"]["ours"],
            small["target_vs_shapiq"], small["time_per_evaluation"], small["notes"])
    if large:
        _report_large(large)
    print(f"wrote {out} and {out.with_suffix('.png')} (loadavg {os.getloadavg()[0]:.1f})")
    return 0



def small_game(args) -> dict:
    """The 12-16 superpixel game: exact values by enumeration, all estimators over many seeds."""
    features = args.features or (12 if args.quick else 16)
    seeds = list(range(args.seeds or (20 if args.quick else 30)))
    size = 24 if args.quick else 32
    torch.manual_seed(0)
    model_game, model, x, mask = build_game(features, size)
    num = model_game.num_features
    start = time.perf_counter()
    rows = all_subsets(num)
    table = model_game(rows).cpu()
    exact_s = time.perf_counter() - start
    exact = table @ shapley_coefficients(rows)
    game = TableGame(table, num)
    print(f"game: VGG3D on {size}^3, F = {num} superpixels, exact Shapley from {2 ** num} evaluations in {exact_s:.1f} s")

    svs_samples = [1, 2, 3, 5, 10, 25]
    budgets = sorted({int(k * num) for k in (1.5, 2, 3, 5, 8, 12, 25)} | {100, 200})
    runs = {"captum_svs": captum_runs(game, "captum_svs", svs_samples, seeds),
            "captum_kernelshap": captum_runs(game, "captum_kernelshap", budgets, seeds)}
    for method in OURS:
        runs[method] = our_runs(game, method, budgets, seeds)
    notes = []
    if _have_shapiq():
        for method in ("shapiq_kernelshap", "shapiq_leverage", "shapiq_permutation", "shapiq_svarm",
                       "shapiq_stratified", "shapiq_unbiased_kernelshap"):
            runs[method] = shapiq_runs(game, method, budgets, seeds)
    else:
        notes.append("shapiq not importable; its columns are skipped (pip install shapiq, or --extra-path)")
    results = _curves(runs, exact)
    # Target 1: Captum SVS at n_samples = 25.
    svs25 = next(r for r in results["captum_svs"] if r["budget"] == 25)
    target1 = {}
    for name in OURS:
        reached = [r["evaluations"] for r in results[name] if r["rmse"] <= svs25["rmse"]]
        first = min(reached) if reached else None
        target1[name] = {"evaluations": first, "share_of_captum": first / svs25["evaluations"] if first else None,
                         "met": bool(first and first <= svs25["evaluations"] / 5)}
    target2 = target_vs_shapiq(results)
    timing = time_per_evaluation(model_game, model, x, mask, repeats=3 if args.quick else 5)
    return {"game": {"features": num, "size": size, "exact_evaluations": 2 ** num, "exact_s": exact_s,
                     "exact_shapley": exact.tolist()},
            "seeds": len(seeds), "results": results, "target_captum_svs25": {"captum": svs25, "ours": target1},
            "target_vs_shapiq": target2, "time_per_evaluation": timing, "notes": notes}


def target_vs_shapiq(results: dict) -> dict:
    """Target 2: leverage / regression_adjusted against shapiq's best regression estimator
    (KernelSHAP, its Leverage-SHAP configuration, UnbiasedKernelSHAP, those run) at equal budgets."""
    target2 = {}
    shapiq_regression = [n for n in ("shapiq_kernelshap", "shapiq_leverage", "shapiq_unbiased_kernelshap") if n in results]
    if not shapiq_regression:
        return target2
    for name in ("leverage", "regression_adjusted"):
        ratios = []
        for ours, *theirs in zip(results[name], *[results[n] for n in shapiq_regression]):
            best = min(t["rmse"] for t in theirs)
            ratios.append({"budget": ours["budget"], "ours_rmse": ours["rmse"], "shapiq_best_rmse": best,
                           "ratio": ours["rmse"] / best if best > 0 else (1.0 if ours["rmse"] == 0 else float("inf"))})
        target2[name] = {"per_budget": ratios, "met": all(r["ratio"] <= 1.05 for r in ratios)}
    return target2


def large_game(args, seeds) -> dict:
    """The ~200-superpixel game: reference from a long antithetic run (its own standard errors are
    the error floor), then every estimator at a few budgets on the real CNN."""
    model_game, _, _, _ = build_game(args.large_features, args.large_size, downsample=args.large_downsample)
    model_game.chunk_size = LARGE_CHUNK
    game = ModelRowsGame(model_game)
    num = game.num
    start = time.perf_counter()
    reference = estimate_shapley(game, num, "antithetic", n_evaluations=args.reference_evaluations, seed=10 ** 6)
    reference_s = time.perf_counter() - start
    floor = float(reference.stderr.square().mean().sqrt())
    print(f"large game: VGG3D on {args.large_size // args.large_downsample}^3, F = {num}; reference: antithetic, "
          f"{reference.n_evaluations} evaluations in {reference_s:.0f} s, RMS stderr {floor:.2e}", flush=True)
    factors = (2, 5, 10) if args.quick else (2, 5, 10, 25)
    budgets = [k * num for k in factors]
    runners = [("captum_svs", captum_runs, list(factors)), ("captum_kernelshap", captum_runs, budgets)]
    runners += [(method, our_runs, budgets) for method in OURS]
    if _have_shapiq():
        # not shapiq's SVARM: its Python loop over players took 756 s per seed at F = 220 (3 budgets)
        runners += [(method, shapiq_runs, budgets) for method in ("shapiq_kernelshap", "shapiq_leverage",
                                                                   "shapiq_permutation")]
    runs, seconds = {}, {}
    for method, runner, points in runners:
        start = time.perf_counter()
        runs[method] = runner(game, method, points, seeds)
        seconds[method] = time.perf_counter() - start
        print(f"  {method}: {seconds[method]:.0f} s", flush=True)
    results = _curves(runs, reference.values)
    return {"features": num, "size": args.large_size // args.large_downsample, "phantom_size": args.large_size,
            "downsample": args.large_downsample, "chunk": LARGE_CHUNK, "seeds": len(seeds),
            "reference": {"method": "antithetic", "evaluations": reference.n_evaluations, "seconds": reference_s,
                          "rms_stderr": floor, "max_stderr": float(reference.stderr.max()),
                          "values": reference.values.tolist(), "stderr": reference.stderr.tolist()},
            "results": results, "seconds_per_method": seconds}


def _have_shapiq() -> bool:
    try:
        import shapiq  # noqa: F401
    except ImportError:
        return False
    return True


def _curves(runs, exact) -> dict:
    results = {}
    for name, by_budget in runs.items():
        results[name] = []
        for budget, (estimates, evaluations) in by_budget.items():
            rmse, max_abs = errors(estimates, exact)
            results[name].append({"budget": budget, "evaluations": evaluations, "rmse": rmse, "max_abs": max_abs})
    return results


def schema_rows(results: dict, timing: dict, game: str, seeds: int) -> list:
    """Accuracy points (one per method and budget: no time, ``median_s`` null) and the time per
    model evaluation of each method (median of the repeats; the spread is not kept)."""
    rows = [row("estimate_shapley", name, f"{game} budget {r['budget']}", device="cpu", dtype="float32", median_s=None,
                seeds=seeds, **r) for name, curve in results.items() for r in curve]
    rows += [row("estimate_shapley", name, f"{game} time per evaluation", device="cpu", dtype="float32",
                 median_s=t["median_s_per_evaluation"], **t) for name, t in timing.items()]
    return rows


def _report(results, svs25, target1, target2, timing, notes) -> None:
    print(f"{'method':28s} " + " ".join(f"{r['evaluations']:>8d}" for r in results["leverage"]))
    for name, curve in results.items():
        print(f"{name:28s} " + " ".join(f"{r['rmse']:8.2e}" for r in curve) + "   (evals: "
              + ",".join(str(r["evaluations"]) for r in curve) + ")")
    print(f"Captum SVS n_samples=25: {svs25['evaluations']} evaluations, RMSE {svs25['rmse']:.3e}")
    for name, t in target1.items():
        share = f"{t['share_of_captum']:.2f}" if t["share_of_captum"] else "not reached"
        print(f"  {name:22s} reaches it with {t['evaluations']} evaluations (share {share}) {'ok' if t['met'] else 'MISSED'}")
    for name, t in target2.items():
        worst = max(r["ratio"] for r in t["per_budget"])
        print(f"  {name:22s} vs shapiq best regression: worst RMSE ratio {worst:.2f} {'ok' if t['met'] else 'MISSED'}")
    for name, t in timing.items():
        print(f"  time/evaluation {name:22s} {t['median_s_per_evaluation'] * 1e3:.3f} ms "
              f"(x{t['ratio_to_feature_ablation']:.3f} of FeatureAblation)")
    for note in notes:
        print("note:", note)




def _report_large(large: dict) -> None:
    ref = large["reference"]
    print(f"large game, F = {large['features']}: reference {ref['evaluations']} evaluations, RMS stderr "
          f"{ref['rms_stderr']:.2e}")
    for name, curve in large["results"].items():
        print(f"  {name:26s} " + " ".join(f"{r['rmse']:8.2e}" for r in curve) + "   (evals: "
              + ",".join(str(r["evaluations"]) for r in curve) + ")")
    for name, t in large["target_vs_shapiq"].items():
        print(f"  {name:22s} vs shapiq best regression: RMSE ratios "
              + ", ".join(f"{r['ratio']:.2f}" for r in t["per_budget"]) + (" ok" if t["met"] else " MISSED"))


if __name__ == "__main__":
    sys.exit(main())
