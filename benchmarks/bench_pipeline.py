"""``mmxai_fast.explain`` against the paper's Captum pipeline, measured in one run; writes JSON.

    python benchmarks/bench_pipeline.py --out benchmarks/results/pipeline.json [--quick]

Both sides explain the same VGG-like 3D model on the same synthetic 4-modality case with the same
SLIC superpixels (one mask per modality) and zero baseline. Anchors: ``superpixel_mask`` +
``captum.attr.<Method>`` with ``perturbations_per_eval=1`` (batch 1, as Jin et al. ran it) and with
the same batch as ours. Ratio = anchor time / ``explain`` time. Also reported: model evaluations,
the share of ``explain``'s wall time spent inside the model, and the largest difference from
Captum's attributions (Shapley: equal seeds, equal permutations).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import environment, measure, print_rows, write_json_atomically  # noqa: E402

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


def bench(method: str, case: Case, model, superpixels: Superpixels, kwargs: dict, device, repeats: int):
    import captum.attr as ca

    x = case.image[None].to(device)
    target = int(model(x).argmax())
    last = {}

    def ours():
        last["exp"] = explain(model, case, method=method, target=target, superpixels=superpixels,
                              method_kwargs=kwargs, show_progress=False, device=device)

    def anchor(batch):
        def run():
            mask = superpixel_mask(case, superpixels)[None].to(device)
            torch.manual_seed(0)
            with torch.no_grad():
                last[f"captum{batch}"] = getattr(ca, method)(model).attribute(
                    x, baselines=torch.zeros_like(x), target=target, feature_mask=mask,
                    perturbations_per_eval=batch, **{k: v for k, v in kwargs.items() if k != "perturbations_per_eval"})
        return run

    timed_ours = measure(ours, device, repeats=repeats)
    exp = last["exp"]
    batch = kwargs.get("perturbations_per_eval", 16)
    rows_per_call = max(1, (exp.stats.model_inputs - 1) // max(1, exp.stats.model_evaluations - 1))
    features = int(exp.feature_mask.max())
    label = f"{method} 4x{case.image.shape[-1]}^3 F={features} " + " ".join(f"{k}={v}" for k, v in kwargs.items())
    rows = [dict(case=label, impl="mmxai_fast.explain", **timed_ours, model_evaluations=exp.stats.model_evaluations,
                 model_inputs=exp.stats.model_inputs, model_share=exp.stats.model_share)]
    for b in (1, batch):
        timed = measure(anchor(b), device, repeats=repeats)
        ref = last[f"captum{b}"][0].cpu()
        ref = ref.masked_fill(~case.foreground, 0)
        diff = float((ref - exp.attributions).abs().max())
        rows.append(dict(case=label, impl=f"SLIC + captum.attr.{method} batch {b}", **timed,
                         speedup=timed["median_s"] / timed_ours["median_s"], max_abs_diff=diff,
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
    rows = []
    rows += bench("FeatureAblation", case, model, superpixels, {"perturbations_per_eval": 16}, device, args.repeats)
    rows += bench("ShapleyValueSampling", case, model, superpixels, {"n_samples": 2, "perturbations_per_eval": 16},
                  device, args.repeats)
    print_rows(rows)
    write_json_atomically(args.out, {"environment": environment(device), "rows": rows})


if __name__ == "__main__":
    main()
