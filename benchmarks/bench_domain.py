"""Domain workflows against their natural anchors, measured in one run; writes JSON.

    python benchmarks/bench_domain.py --out benchmarks/results/domain_cpu_2core.json [--quick]

- DWT window selection (``mmxai_fast.ct.select_window_from_cam``) on 64 slices of 512x512 int16 HU
  against the paper's procedure in numpy (``np.unique`` per image); the selected windows are
  asserted equal. Two CAMs: smooth (an upsampled coarse map, like Grad-CAM: numpy's boolean
  indexing runs fast on it) and random per pixel (numpy's worst case). Target on this project's
  2-core CPU: >= 5x.
- Exact modality Shapley values for 4 modalities (``mmxai_fast.modality.modality_censorship``,
  the 16 subsets batched through the engine, and one subset per call) with a VGG3D, against
  evaluating the 16 subsets one by one in a plain loop, and against Captum's ``ShapleyValues``
  with a per-modality feature mask; the Shapley values are asserted equal.

Ratios are anchor time / mmxai_fast time for the same inputs on the same device.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, environment, measure, run_benches, write_run  # noqa: E402

from mmxai_fast.ct import select_window_from_cam  # noqa: E402
from mmxai_fast.models import VGG3D  # noqa: E402
from mmxai_fast.modality import exact_shapley_from_subsets, modality_censorship  # noqa: E402
from mmxai_fast.modality.censorship import subset_membership  # noqa: E402


def numpy_window_selection(hu: np.ndarray, cam: np.ndarray, th_fail: float, low=-1024, high=3071):
    """The paper's dynamic selection, image by image with np.unique."""
    kept = []
    for h, c in zip(hu, cam):
        values, counts = np.unique(h[(c > th_fail) & (h >= low) & (h <= high)], return_counts=True)
        kept.append(values[counts >= 2])
    kept = np.concatenate(kept)
    return int(kept.min()), int(kept.max())


def smooth_cam(shape, generator):
    """A Grad-CAM-like map: coarse random activations upsampled bilinearly, in [0, 1]."""
    coarse = torch.rand((shape[0], 1, shape[1] // 32, shape[2] // 32), generator=generator)
    return torch.nn.functional.interpolate(coarse, size=shape[1:], mode="bilinear", align_corners=False)[:, 0]


def bench_window_selection(device, quick):
    rows = []
    for cam_kind in ("smooth", "random"):
        rows.extend(_bench_window_selection(device, quick, cam_kind))
    return rows


def _bench_window_selection(device, quick, cam_kind):
    g = torch.Generator().manual_seed(0)
    slices = 16 if quick else 64
    shape = (slices, 512, 512)
    hu = torch.randint(-1024, 3072, shape, dtype=torch.int16, generator=g)
    cam = smooth_cam(shape, g) if cam_kind == "smooth" else torch.rand(shape, generator=g)
    hu_np, cam_np = hu.numpy(), cam.numpy()
    hu, cam = hu.to(device), cam.to(device)
    th_fail = 0.5
    window = select_window_from_cam(hu, cam, th_fail)
    assert (window.lower, window.upper) == numpy_window_selection(hu_np, cam_np, th_fail)
    case = f"DWT selection {slices}x512x512 int16, {cam_kind} CAM"
    ours = measure(lambda: select_window_from_cam(hu, cam, th_fail), device, repeats=7)
    reference = measure(lambda: select_window_from_cam(hu, cam, th_fail, backend="reference"), device, repeats=3)
    numpy_ = measure(lambda: numpy_window_selection(hu_np, cam_np, th_fail), torch.device("cpu"), repeats=5)
    bytes_read = hu.numel() * (hu.element_size() + cam.element_size())
    return [
        dict(case=case, impl="mmxai_fast.ct.select_window_from_cam", **ours, gbps=bytes_read / ours["median_s"] / 1e9),
        dict(case=case, impl="numpy np.unique per image", **numpy_, speedup=numpy_["median_s"] / ours["median_s"],
             target=5),
        dict(case=case, impl="torch reference (bincount)", **reference,
             speedup=reference["median_s"] / ours["median_s"]),
    ]


def one_by_one_modality_shapley(model, x, target, num_modalities):
    """The 16 subsets evaluated one model call each (removed modality = zeros)."""
    per_modality = x.shape[1] // num_modalities
    values = []
    with torch.no_grad():
        for present in subset_membership(num_modalities):
            keep = present.repeat_interleave(per_modality).to(x.dtype).reshape(1, -1, 1, 1, 1)
            values.append(model(x * keep)[:, target])
    return exact_shapley_from_subsets(torch.stack(values))


def bench_modality_shapley(device, quick):
    from captum.attr import ShapleyValues as CaptumShapleyValues

    torch.manual_seed(0)
    edge = 24 if quick else 32
    model = VGG3D(in_channels=4, num_classes=2).eval().to(device)
    x = torch.randn(2, 4, edge, edge, edge, device=device)
    mask = torch.arange(4, device=device).reshape(1, 4, 1, 1, 1)
    batched = modality_censorship(model, x, 4, target=1, perturbations_per_eval=16).shapley
    loop = one_by_one_modality_shapley(model, x, 1, 4)
    torch.testing.assert_close(batched, loop, rtol=1e-4, atol=1e-5)
    captum = CaptumShapleyValues(model)
    with torch.no_grad():
        captum_phi = captum.attribute(x, target=1, feature_mask=mask)[:, :, 0, 0, 0].t()
    torch.testing.assert_close(batched.float(), captum_phi, rtol=1e-4, atol=1e-5)
    case = f"modality Shapley M=4 VGG3D N=2 4x{edge}^3"
    ours = measure(lambda: modality_censorship(model, x, 4, target=1, perturbations_per_eval=16), device, repeats=5)
    per_subset = measure(lambda: modality_censorship(model, x, 4, target=1, perturbations_per_eval=1), device,
                         repeats=5)
    one_by_one = measure(lambda: one_by_one_modality_shapley(model, x, 1, 4), device, repeats=5)
    with torch.no_grad():
        captum_t = measure(lambda: captum.attribute(x, target=1, feature_mask=mask), device, repeats=3)
    return [
        dict(case=case, impl="modality_censorship (16 subsets batched)", **ours, model_calls=2),
        dict(case=case, impl="modality_censorship, 1 subset per call", **per_subset, model_calls=16,
             speedup=per_subset["median_s"] / ours["median_s"]),
        dict(case=case, impl="16 subsets one by one", **one_by_one, model_calls=16,
             speedup=one_by_one["median_s"] / ours["median_s"]),
        dict(case=case, impl="captum ShapleyValues, per-modality mask", **captum_t,
             speedup=captum_t["median_s"] / ours["median_s"]),
    ]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/domain.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--only", nargs="*", choices=["window_selection", "modality_shapley"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    benches = {"window_selection": bench_window_selection, "modality_shapley": bench_modality_shapley}
    load_before = os.getloadavg()
    rows = run_benches(benches, args.only, device, args.quick)
    # On a shared, oversubscribed CPU, OpenMP threads that spin while waiting (the default) steal
    # the cores from the threads doing the work: record the policy the run used.
    env = dict(environment(device), omp_wait_policy=os.environ.get("OMP_WAIT_POLICY"))
    rows = [as_row(r, "select_window_from_cam" if r["case"].startswith("DWT") else "modality_censorship",
                   device=device.type, dtype="int16" if r["case"].startswith("DWT") else "float32") for r in rows]
    write_run(args.out, rows, script="bench_domain.py", argv=argv, device=device, loadavg_before=load_before,
              environment=env)


if __name__ == "__main__":
    main()
