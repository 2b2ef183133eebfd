"""``incremental=True`` against ``incremental=False`` through the attribution classes, side by side
in one run: Occlusion (12^3 windows, stride 12: 64 windows) and ShapleyValueSampling (64 cube
superpixels of 12^3, 4 permutations, 4 chains) on VGG3D (default widths, random weights), 4x48^3.

    PYTHONPATH=$PWD python benchmarks/bench_attr_incremental.py [--out FILE.json]

Prints (and optionally writes) one JSON object: CPU, threads, load average before/after, wall time
of each side, their ratio, max |incremental - dense| and the report's predicted speedup / cache.
"""
import argparse
import json
import os
import sys
import time

import torch

from mmxai_fast.attr import Occlusion, ShapleyValueSampling
from mmxai_fast.models import VGG3D

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _harness import cpu_facts, environment, row, write_results  # noqa: E402


def _cubes(size: int, block: int) -> torch.Tensor:
    idx = torch.arange(size) // block
    per = size // block
    return (idx[:, None, None] * per * per + idx[None, :, None] * per + idx[None, None, :])[None, None]


def _case(make, call, x):
    out = {}
    for incremental in (True, False):
        explainer = make()
        torch.manual_seed(0)
        start = time.perf_counter()
        attr = call(explainer, x, incremental)
        out[incremental] = (time.perf_counter() - start, attr, getattr(explainer, "last_incremental_report"))
    (t_inc, a_inc, report), (t_dense, a_dense, _) = out[True], out[False]
    return dict(dense_s=t_dense, incremental_s=t_inc, ratio=t_dense / t_inc,
                max_abs_diff=float((a_inc - a_dense).abs().max()), predicted_speedup=report["predicted_speedup"],
                cache_bytes=report["cache_bytes"], model_calls=report["model_calls"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = VGG3D().eval()
    x = torch.randn(1, 4, 48, 48, 48)
    mask = _cubes(48, 12)
    ShapleyValueSampling(model).attribute(x, target=1, feature_mask=mask, n_samples=1)  # warm-up (kernels)
    load_before = os.getloadavg()
    result = {}
    result["Occlusion"] = _case(lambda: Occlusion(model), lambda e, x, inc: e.attribute(
        x, sliding_window_shapes=(4, 12, 12, 12), strides=(1, 12, 12, 12), target=1, perturbations_per_eval=16,
        incremental=inc), x)
    result["ShapleyValueSampling"] = _case(lambda: ShapleyValueSampling(model), lambda e, x, inc: e.attribute(
        x, target=1, feature_mask=mask, n_samples=4, perturbations_per_eval=4, incremental=inc), x)
    # one run per side (iqr_s null); ratio: the dense side's time / the incremental side's
    rows = [row(op, "mmxai_fast incremental=True", "VGG3D 4x48^3, 64 windows / 64 cubes of 12^3", device="cpu",
                dtype="float32", median_s=r["incremental_s"], ratio=r.pop("ratio"), **r) for op, r in result.items()]
    meta = {"environment": environment(torch.device("cpu")), "cpu": cpu_facts(load_before)}
    print(json.dumps({"meta": meta, "rows": rows}, indent=1))
    if args.out:
        write_results(args.out, rows, meta)


if __name__ == "__main__":
    main()
