"""Incremental inference vs dense batched inference for perturbation explanations of 3D CNNs.

    PYTHONPATH=$PWD python benchmarks/bench_incremental.py --quick     # ~3 min: 4x64^3, window subsets
    PYTHONPATH=$PWD python benchmarks/bench_incremental.py             # 4x64^3, more windows / steps
    PYTHONPATH=$PWD python benchmarks/bench_incremental.py --full      # adds 4x128^3 (~20 min at load 11)

Side by side in one process (same load): Occlusion (16^3 windows, stride 8) and Shapley value
sampling (about 200 SLIC superpixels) on a VGG-like (mmxai_fast VGG3D) and a ResNet-like (MONAI
resnet18) classifier, random weights, eval mode. The dense and the incremental side evaluate the
SAME windows / chain steps (an evenly spread subset of the windows, a prefix of each permutation
chain: the cost per window / step does not depend on how many are run), so the ratio is per model
evaluation. Drill-down Occlusion runs the whole map and is compared with the exact incremental map
(equal to dense to float tolerance, see tests/test_incremental*.py); its dense time is the
measured dense time per window times the number of windows. Captum's Occlusion is timed on a 32^3
case where it is cheap. Writes benchmarks/results/incremental_cpu.json.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, cpu_facts, environment, write_results  # noqa: E402

from mmxai_fast.incremental import (IncrementalPlan, IncrementalRunner, dense_evaluator,  # noqa: E402
                                    drilldown_occlusion, error_report, feature_boxes, occlusion, occlusion_diffs,
                                    occlusion_windows, shapley, window_boxes)
from mmxai_fast.models import VGG3D  # noqa: E402
from mmxai_fast.ops import random_permutations, slic  # noqa: E402


def randomised(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) * 0.2 - 0.1)
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model.eval()


def models():
    torch.manual_seed(0)
    out = {"vgg3d": randomised(VGG3D(in_channels=4, num_classes=2))}
    try:
        import monai
        out["monai_resnet18"] = randomised(monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=4,
                                                                        num_classes=2))
    except ImportError:
        print("monai not installed: resnet18 skipped")
    return out


def volume(side: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, 4, side, side, side, generator=g)
    return torch.nn.functional.avg_pool3d(x, 5, 1, 2) * 3  # smooth: SLIC gives compact superpixels


CPU_TIMES = []  # process CPU seconds of each timed call, next to its wall time


def timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    value = fn()
    CPU_TIMES.append(time.process_time() - cpu)
    return value, time.perf_counter() - start


def timed_pair(dense_fn, inc_fn, repeats):
    """Alternate the two sides ``repeats`` times (both under the same load); best time of each."""
    dense_t, inc_t = [], []
    dense_cpu, inc_cpu = [], []
    for _ in range(repeats):
        dense, t = timed(dense_fn)
        dense_t.append(t)
        dense_cpu.append(CPU_TIMES[-1])
        inc, t = timed(inc_fn)
        inc_t.append(t)
        inc_cpu.append(CPU_TIMES[-1])
    LAST_CPU_RATIO[0] = min(dense_cpu) / min(inc_cpu)
    return dense, min(dense_t), inc, min(inc_t)


LAST_CPU_RATIO = [float("nan")]  # dense over incremental process CPU time of the last pair


def predicted(runner, boxes, chunk):
    flops = [runner.plan.dense_flops / runner.predicted_speedup(boxes[k:k + chunk]) for k in range(0, len(boxes), chunk)]
    return runner.plan.dense_flops / (sum(flops) / len(flops))


def bench_occlusion(name, model, x, n_windows, chunk, drill, repeats, drill_seeds=(0, 1, 2)):
    windows = occlusion_windows(x, (16, 16, 16), 8)
    step = max(1, windows.num_windows // n_windows)
    ids = list(range(0, windows.num_windows, step))[:n_windows]
    runner, build_s = timed(lambda: IncrementalRunner(IncrementalPlan.from_module(model, x), x))
    with torch.no_grad():
        ref = model(x)
    dense_evaluator(model)(x.repeat(2, 1, 1, 1, 1), None)  # warm-up
    dense, dense_s, inc, inc_s = timed_pair(
        lambda: occlusion_diffs(dense_evaluator(model), ref, x, windows, ids, 0.0, 1, chunk),
        lambda: occlusion_diffs(runner, runner.reference_output, x, windows, ids, 0.0, 1, chunk), repeats)
    row = {"case": f"occlusion 16^3/8 {name} {tuple(x.shape[1:])}", "windows_total": windows.num_windows,
           "windows_timed": len(ids), "repeats": repeats, "dense_s": dense_s, "incremental_s": inc_s, "speedup": dense_s / inc_s,
           "cpu_time_speedup": LAST_CPU_RATIO[0], "predicted_speedup": predicted(runner, window_boxes(windows, ids), chunk),
           "cache_MB": runner.cache_bytes / 2 ** 20, "runner_build_s": build_s,
           "max_abs_diff_vs_dense": float((inc - dense).abs().max()), "unsupported": runner.plan.unsupported}
    rows = [row]
    dense_per_window = dense_s / len(ids)
    for seed in (drill_seeds if drill else ()):
        xs = x if seed == 0 else volume(x.shape[-1], seed)
        run = runner if seed == 0 else IncrementalRunner(runner.plan, xs)
        exact, exact_s = timed(lambda: occlusion(model, xs, (16, 16, 16), 8, target=1, chunk=chunk, runner=run))
        dense_exact_s = dense_per_window * windows.num_windows
        for factor, fraction, focus in drill:
            (attr, stats), drill_s = timed(lambda: drilldown_occlusion(run, run.reference_output, xs, (16, 16, 16),
                                                                       8, target=1, coarse_factor=factor,
                                                                       fraction=fraction, chunk=chunk, focus=focus))
            rows.append({"case": f"drill-down occlusion {name} {tuple(x.shape[1:])} seed {seed} factor {factor} "
                                 f"top {fraction} focus {focus}", "focus_rounds": stats["rounds"],
                         "windows_total": stats["windows"], "windows_evaluated": stats["evaluated"],
                         "dense_exact_s_extrapolated": dense_exact_s, "incremental_exact_s": exact_s,
                         "drilldown_s": drill_s, "speedup": dense_exact_s / drill_s,
                         "speedup_vs_incremental_exact": exact_s / drill_s, **error_report(attr, exact)})
    return rows


def bench_shapley(name, model, x, steps, chains, repeats):
    labels = slic(x[0], n_segments=250, compactness=1.0, channel_axis=0, start_label=0)
    mask = torch.as_tensor(labels).long().unsqueeze(0)
    num_features = int(mask.max()) + 1
    perms = random_permutations(chains, num_features, generator=torch.Generator().manual_seed(0))
    runner = IncrementalRunner(IncrementalPlan.from_module(model, x), torch.zeros_like(x))
    common = dict(baseline=0.0, target=1, chains=chains, steps=steps)
    dense, dense_s, inc, inc_s = timed_pair(lambda: shapley(model, x, mask, perms, incremental=False, **common),
                                            lambda: shapley(model, x, mask, perms, runner=runner, **common), repeats)
    boxes = feature_boxes(mask, num_features, x.shape[2:])[perms[:, :steps].T.reshape(-1)]
    return [{"case": f"shapley {num_features} superpixels {name} {tuple(x.shape[1:])}", "chains": chains,
             "steps_timed": steps, "repeats": repeats, "dense_s": dense_s, "incremental_s": inc_s, "speedup": dense_s / inc_s,
             "cpu_time_speedup": LAST_CPU_RATIO[0], "predicted_speedup": predicted(runner, boxes, chains),
             "cache_MB_per_chain": runner.cache_bytes / 2 ** 20,
             "max_abs_diff_vs_dense": float((inc - dense).abs().max())}]


def bench_captum(model):
    from captum.attr import Occlusion
    x = volume(32)
    kw = dict(sliding_window_shapes=(4, 16, 16, 16), strides=(1, 8, 8, 8), baselines=0.0, target=1,
              perturbations_per_eval=9)
    ref, captum_s = timed(lambda: Occlusion(model).attribute(x, **kw))
    dense, dense_s = timed(lambda: occlusion(model, x, (16, 16, 16), 8, target=1, chunk=9, incremental=False))
    inc, inc_s = timed(lambda: occlusion(model, x, (16, 16, 16), 8, target=1, chunk=9))
    return [{"case": "occlusion vgg3d (4, 32, 32, 32), all 27 windows", "captum_s": captum_s, "dense_s": dense_s,
             "incremental_s": inc_s, "speedup_vs_captum": captum_s / inc_s, "speedup": dense_s / inc_s,
             "max_abs_diff_vs_captum": float((inc - ref).abs().max())}]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small subsets (~2-3 minutes)")
    parser.add_argument("--full", action="store_true", help="also 4x128^3")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "incremental_cpu.json"))
    args = parser.parse_args(argv)
    load_before, started = os.getloadavg(), time.perf_counter()
    nets = models()
    rows = bench_captum(nets["vgg3d"])
    sides = [64, 128] if args.full else [64]
    for side in sides:
        x = volume(side)
        for name, model in nets.items():
            vgg, small = name == "vgg3d", side == 64
            n_windows = (8 if vgg else 4) if args.quick else (16 if vgg else 4)
            if not small:  # 4x128^3: a dense row costs 8x more; fewer windows (the cost per window is the same)
                n_windows = 8 if vgg else 2
            # defaults (focus refinement) and the plain coarse-then-top-fraction mode
            drill = [(2, 0.05, 0.02), (2, 0.2, 0.0)] if vgg and small else None
            repeats = 2 if vgg and small else 1
            rows += bench_occlusion(name, model, x, n_windows, 8 if small else 4, drill, repeats)
            if vgg or (small and not args.quick):
                rows += bench_shapley(name, model, x, steps=24 if vgg and small and not args.quick else 8,
                                      chains=4, repeats=repeats)
            print(*(f"{r['case']}: {r['speedup']:.2f}x" for r in rows[-2:]), sep="\n", flush=True)
    env = dict(environment(torch.device("cpu")), argv=sys.argv[1:], runtime_s=time.perf_counter() - started)
    facts = cpu_facts(load_before)
    write_results(Path(args.out), [schema_row(r) for r in rows], {"environment": env, "cpu": facts})
    for r in rows:
        extra = (f" (cpu time {r['cpu_time_speedup']:.2f}x, predicted {r['predicted_speedup']:.2f}x)"
                 if "predicted_speedup" in r else "")
        print(f"{r['case']:70s} {r['speedup']:6.2f}x{extra}")
    print(f"load average before {load_before}, after {facts['loadavg_after']}; runtime {env['runtime_s']:.0f} s; "
          f"wrote {args.out}")


def schema_row(r: dict) -> dict:
    """The incremental side's best time (of ``repeats``, alternated with the dense side) as
    ``median_s``; ``ratio`` = the dense (or drill-down's exact) time / it."""
    median_key = "drilldown_s" if "drilldown_s" in r else "incremental_s"
    op = "occlusion" if "occlusion" in r["case"] else "shapley"
    return as_row(dict(r, impl="mmxai_fast incremental", timing="best of repeats"), op, device="cpu", dtype="float32",
                  median_key=median_key)


if __name__ == "__main__":
    main()
