"""``mmxai_fast.explain`` against the paper's Captum pipeline, measured in one run; writes JSON.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.json [--quick]

Both sides explain the same VGG-like 3D model on the same synthetic 4-modality case with the same
SLIC superpixels (one mask per modality) and zero baseline. Anchors: ``superpixel_mask`` +
``captum.attr.<Method>`` with ``perturbations_per_eval=1`` (batch 1, as Jin et al. ran it) and with
the same batch as ours. Ratio = anchor time / ``explain`` time. The three are run in turn within
each timing round (the machine may be shared: load falls on all of them alike). Also reported: model evaluations,
the share of ``explain``'s wall time spent inside the model, and the largest difference from
Captum's attributions (Shapley: equal seeds, equal permutations).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, print_rows, sync, write_run  # noqa: E402

from mmxai_fast.models import VGG3D  # noqa: E402
from mmxai_fast.pipeline import Case, Superpixels, explain, superpixel_mask  # noqa: E402


def synthetic_case(edge: int, modalities: int = 4) -> Case:
    """A textured ball per modality on a zero background (BraTS-like skull-stripped layout)."""
    g = torch.Generator().manual_seed(0)
    grid = torch.stack(torch.meshgrid(*[torch.arange(edge)] * 3, indexing="ij")).float()
    fg = ((grid - (edge - 1) / 2) ** 2).sum(0).sqrt() <= 0.42 * edge
    image = torch.stack([torch.randn(edge, edge, edge, generator=g) + 0.5 * m for m in range(modalities)])
    image = image.mul(fg).float()
    return Case(image, tuple(f"mod{m}" for m in range(modalities)), np.eye(4), foreground=fg)


def measure_interleaved(fns: Dict[str, Callable[[], object]], device, repeats: int, warmup: int = 1):
    """Like ``_harness.measure`` for several functions, run in turn within each round, so that load
    from other processes on a shared machine falls on all of them alike."""
    times: Dict[str, List[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    out = {}
    for name, values in times.items():
        q = statistics.quantiles(values, n=4) if len(values) >= 2 else [values[0]] * 3
        out[name] = {"median_s": statistics.median(values), "min_s": min(values), "max_s": max(values),
                     "iqr_s": q[2] - q[0], "repeats": repeats}
    return out


def bench(method: str, case: Case, model, superpixels: Superpixels, kwargs: dict, device, repeats: int):
    import captum.attr as ca

    x = case.image[None].to(device)
    target = int(model(x).argmax())
    batch = kwargs.get("perturbations_per_eval", 16)
    last = {}

    def ours():
        last["ours"] = explain(model, case, method=method, target=target, superpixels=superpixels,
                               method_kwargs=kwargs, show_progress=False, device=device)

    def anchor(rows):
        def run():
            mask = superpixel_mask(case, superpixels)[None].to(device)
            torch.manual_seed(0)
            with torch.no_grad():
                last[rows] = getattr(ca, method)(model).attribute(
                    x, baselines=torch.zeros_like(x), target=target, feature_mask=mask, perturbations_per_eval=rows,
                    **{k: v for k, v in kwargs.items() if k != "perturbations_per_eval"})
        return run

    timed = measure_interleaved({"ours": ours, 1: anchor(1), batch: anchor(batch)}, device, repeats)
    exp = last["ours"]
    label = f"{method} 4x{case.image.shape[-1]}^3 F={int(exp.feature_mask.max())} " + " ".join(
        f"{k}={v}" for k, v in kwargs.items())
    rows = [dict(case=label, impl="mmxai_fast.explain", **timed["ours"], model_evaluations=exp.stats.model_evaluations,
                 model_inputs=exp.stats.model_inputs, model_share=exp.stats.model_share)]
    for b in (1, batch):
        ref = last[b][0].cpu().masked_fill(~case.foreground, 0)
        rows.append(dict(case=label, impl=f"SLIC + captum.attr.{method} batch {b}", **timed[b],
                         speedup=timed[b]["median_s"] / timed["ours"]["median_s"],
                         max_abs_diff=float((ref - exp.attributions).abs().max()),
                         max_abs_attr=float(exp.attributions.abs().max())))
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/pipeline.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    edge = 32 if args.quick else 48
    case = synthetic_case(edge)
    torch.manual_seed(0)
    model = VGG3D(in_channels=4, num_classes=2, widths=(8, 16, 32)).eval().to(device)
    superpixels = Superpixels(n_segments=25)
    load_before = os.getloadavg()
    rows = []
    rows += bench("FeatureAblation", case, model, superpixels, {"perturbations_per_eval": 16}, device, args.repeats)
    rows += bench("ShapleyValueSampling", case, model, superpixels, {"n_samples": 1, "perturbations_per_eval": 16},
                  device, args.repeats)
    print_rows(rows)
    rows = [as_row(r, r["case"].split()[0], device=device.type, dtype="float32") for r in rows]  # op: the method
    write_run(args.out, rows, script="bench_pipeline.py", argv=argv, device=device, loadavg_before=load_before)


if __name__ == "__main__":
    main()
