"""FeaturePermutation, Lime and KernelShap against Captum 0.9, measured in one run; writes JSON.

    python benchmarks/bench_attr_sampling.py --out benchmarks/results/attr_sampling_cpu.json [--quick]

Ratio = Captum time / mmxai_fast time for the same model, inputs, supervoxels and
``perturbations_per_eval``. Also reported: the share of each call's wall time spent inside the
model (the rest is the method's own overhead: building perturbed inputs, weights, the fit).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import warnings
from pathlib import Path

import captum.attr as ca
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, measure, print_rows, write_run  # noqa: E402

import mmxai_fast.attr as ma  # noqa: E402


def cube_ids(size: int, cells: int) -> torch.Tensor:
    """``[1, 1, size, size, size]`` ids of ``cells^3`` cubes."""
    axis = torch.arange(size) * cells // size
    return (axis.view(-1, 1, 1) * cells * cells + axis.view(1, -1, 1) * cells + axis.view(1, 1, -1)).view(
        1, 1, size, size, size)


class Timed(torch.nn.Module):
    """Wraps the model and accumulates the time spent in it."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seconds = model, 0.0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/attr_sampling_cpu.json"))
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    torch.manual_seed(0)
    load_before = os.getloadavg()
    device = torch.device("cpu")
    size, cells = (12, 3) if args.quick else (16, 4)
    model = Timed(torch.nn.Sequential(torch.nn.Conv3d(2, 8, 3, padding=1), torch.nn.ReLU(),
                                      torch.nn.AdaptiveAvgPool3d(4), torch.nn.Flatten(),
                                      torch.nn.Linear(8 * 64, 3)).eval())
    mask = cube_ids(size, cells)
    one, batch = torch.randn(1, 2, size, size, size), torch.randn(8, 2, size, size, size)
    n = 100 if args.quick else 200
    cases = [
        (f"FeaturePermutation N=8 F={cells ** 3}", "FeaturePermutation", batch, {}),
        (f"Lime N=1 F={cells ** 3} n={n}", "Lime", one, dict(n_samples=n)),
        (f"Lime N=8 F={cells ** 3} n={n // 2}", "Lime", batch, dict(n_samples=n // 2)),
        (f"KernelShap N=1 F={cells ** 3} n={n}", "KernelShap", one, dict(n_samples=n)),
        (f"KernelShap N=1 F={cells ** 3} n={n} solver=torch", "KernelShap", one, dict(n_samples=n, solver="torch")),
    ]
    rows = []
    for case, name, x, extra in cases:
        timings = {}
        for impl, cls in (("captum", getattr(ca, name)), ("mmxai_fast", getattr(ma, name))):
            kwargs = dict(target=0, feature_mask=mask, perturbations_per_eval=16, **extra)
            if impl == "captum":
                kwargs.pop("solver", None)

            def run(cls=cls, kwargs=kwargs, x=x):
                with torch.no_grad():
                    return cls(model).attribute(x, **kwargs)

            run()
            model.seconds = 0.0
            stats = measure(run, device, repeats=3 if args.quick else 5, warmup=0)
            share = model.seconds / (stats["median_s"] * stats["repeats"])
            timings[impl] = stats
            rows.append(as_row(dict(case=case, impl=impl, model_share=round(share, 3), **stats), name,
                               device="cpu", dtype="float32"))
        rows[-2]["ratio"], rows[-1]["ratio"] = timings["captum"]["median_s"] / timings["mmxai_fast"]["median_s"], 1.0
    print_rows(rows)
    for r in rows:
        print(f"{r['case']:44s} {r['impl']:12s} model share {r['model_share']:.2f}")
    write_run(args.out, rows, script="bench_attr_sampling.py", argv=None, device=device, loadavg_before=load_before)


if __name__ == "__main__":
    main()
