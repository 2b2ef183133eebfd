"""Each engine op against its natural anchor, measured in one run; writes JSON.

    python benchmarks/bench_ops.py --out benchmarks/results/ops.json [--quick]

Ratios are anchor time / mmxai_fast time for the same inputs on the same device. Targets (this
project's 2-core CPU): perturb >= 10x vs Captum-style construction and >= 1.5x vs the torch.where
one-liner; hu_window >= 3x vs MONAI ScaleIntensityRange per window; vq_nearest >= 2x vs
torch.cdist + argmin. On a GPU the achieved GB/s and TFLOP/s are reported against measured ceilings.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, measure, run_benches, write_run  # noqa: E402

from mmxai_fast.ops import (HU_WINDOW_PRESETS, OcclusionWindows, hu_window, occlusion_attribution,  # noqa: E402
                            occlusion_attribution_reference, occlusion_batch, perturb, vq_nearest)


def blocky_mask(shape, n_features, block, generator):
    """A superpixel-like mask: ids constant on block^3 cubes, per channel."""
    c, *spatial = shape
    coarse = torch.randint(0, n_features, (c, *[(s + block - 1) // block for s in spatial]), generator=generator)
    for dim in range(1, len(shape)):
        coarse = coarse.repeat_interleave(block, dim)
    return coarse[(slice(None),) + tuple(slice(0, s) for s in spatial)].contiguous()


def captum_style_perturb(x, mask, keep, baseline):
    """What Captum's FeatureAblation does per perturbation: a full-size float mask per row."""
    rows = []
    for b in range(keep.shape[0]):
        m = (~keep[b])[mask].to(x.dtype)
        rows.append(x * (1 - m) + baseline * m)
    return torch.stack(rows)


def bench_perturb(device, quick):
    g = torch.Generator().manual_seed(0)
    edge = 64 if quick else 128
    x = torch.randn(4, edge, edge, edge, generator=g).to(device)
    mask = blocky_mask(x.shape, 200, 16, g).to(device)
    keep = (torch.rand(16, 200, generator=g) > 0.5).to(device)
    baseline = torch.zeros((), device=device)
    case = f"perturb B=16 4x{edge}^3 F=200"
    ours = measure(lambda: perturb(x, mask, keep, 0.0), device)
    where = measure(lambda: torch.where(keep[:, mask], x, baseline), device)
    captum = measure(lambda: captum_style_perturb(x, mask, keep, 0.0), device, repeats=3)
    bytes_moved = 16 * x.numel() * x.element_size() + x.numel() * (x.element_size() + mask.element_size())
    return [
        dict(case=case, impl="mmxai_fast.perturb", **ours, gbps=bytes_moved / ours["median_s"] / 1e9),
        dict(case=case, impl="captum-style x*(1-m)+b*m", **captum, speedup=captum["median_s"] / ours["median_s"], target=10),
        dict(case=case, impl="torch.where(keep[:, mask], x, b)", **where, speedup=where["median_s"] / ours["median_s"], target=1.5),
    ]


def bench_hu_window(device, quick):
    from monai.transforms import ScaleIntensityRange

    g = torch.Generator().manual_seed(0)
    depth = 50 if quick else 200
    ct = torch.randint(-1024, 3072, (512, 512, depth), dtype=torch.int16, generator=g).to(device)
    names = ["brain", "soft_tissue", "lung"]
    transforms = [ScaleIntensityRange(a_min=HU_WINDOW_PRESETS[n].lower, a_max=HU_WINDOW_PRESETS[n].upper,
                                      b_min=0.0, b_max=1.0, clip=True) for n in names]
    case = f"hu_window 3 windows 512x512x{depth} int16"
    ours = measure(lambda: hu_window(ct, names), device)
    monai = measure(lambda: torch.stack([torch.as_tensor(t(ct)) for t in transforms]), device, repeats=3)
    bytes_moved = ct.numel() * (2 + 3 * 4)
    return [
        dict(case=case, impl="mmxai_fast.hu_window", **ours, gbps=bytes_moved / ours["median_s"] / 1e9),
        dict(case=case, impl="MONAI ScaleIntensityRange x3", **monai, speedup=monai["median_s"] / ours["median_s"], target=3),
    ]


def monai_quantize_indices(quantizer, z_channels_first):
    return quantizer.quantize(z_channels_first)[2]


def bench_vq(device, quick):
    from monai.networks.layers.vector_quantizer import EMAQuantizer

    g = torch.Generator().manual_seed(0)
    side = 128 if quick else 256  # N = side * side positions
    z_image = torch.randn(1, 64, side, side, generator=g).to(device)
    quantizer = EMAQuantizer(spatial_dims=2, num_embeddings=512, embedding_dim=64).to(device).eval()
    codebook = quantizer.embedding.weight.detach()
    z = z_image.permute(0, 2, 3, 1).reshape(-1, 64).contiguous()
    case = f"vq_nearest N={z.shape[0]} K=512 D=64"
    ours = measure(lambda: vq_nearest(z, codebook), device)
    cdist = measure(lambda: torch.cdist(z, codebook).argmin(1), device)
    with torch.no_grad():
        monai = measure(lambda: monai_quantize_indices(quantizer, z_image), device)
    flops = 2.0 * z.shape[0] * 512 * 64
    return [
        dict(case=case, impl="mmxai_fast.vq_nearest", **ours, tflops=flops / ours["median_s"] / 1e12),
        dict(case=case, impl="torch.cdist + argmin", **cdist, speedup=cdist["median_s"] / ours["median_s"], target=2),
        dict(case=case, impl="MONAI EMAQuantizer.quantize", **monai, speedup=monai["median_s"] / ours["median_s"]),
    ]


def bench_occlusion(device, quick):
    g = torch.Generator().manual_seed(0)
    edge = 32 if quick else 64
    x = torch.randn(4, edge, edge, edge, generator=g).to(device)
    windows = OcclusionWindows(tuple(x.shape), (1, 8, 8, 8), (1, 4, 4, 4))
    ids = torch.arange(16, device=device)
    case = f"occlusion_batch P=16 4x{edge}^3"

    def captum_style():
        rows = []
        for w in ids.tolist():
            m = torch.zeros_like(x)
            starts, stops = windows.window_box(w)
            m[tuple(slice(a, b) for a, b in zip(starts, stops))] = 1
            rows.append(x * (1 - m))
        return torch.stack(rows)

    ours = measure(lambda: occlusion_batch(x, windows, ids, 0.0), device)
    anchor = measure(captum_style, device)
    diffs = torch.randn(windows.num_windows, generator=g).to(device)
    case2 = f"occlusion_attribution {windows.num_windows} windows"
    ours2 = measure(lambda: occlusion_attribution(diffs, windows), device)
    ref2 = measure(lambda: occlusion_attribution_reference(diffs, windows), device, repeats=3)
    return [
        dict(case=case, impl="mmxai_fast.occlusion_batch", **ours),
        dict(case=case, impl="captum-style full mask per window", **anchor, speedup=anchor["median_s"] / ours["median_s"]),
        dict(case=case2, impl="mmxai_fast.occlusion_attribution", **ours2),
        dict(case=case2, impl="torch reference", **ref2, speedup=ref2["median_s"] / ours2["median_s"]),
    ]


def device_ceilings(device):
    """Measured copy bandwidth (GB/s) and fp32 matmul rate (TFLOP/s) on a GPU."""
    if device.type != "cuda":
        return {}
    a = torch.empty(256 * 1024 * 1024, dtype=torch.uint8, device=device)
    copy = measure(lambda: a.clone(), device)
    m = torch.randn(8192, 8192, device=device)
    mm = measure(lambda: m @ m, device)
    return {"copy_gbps": 2 * a.numel() / copy["median_s"] / 1e9,
            "fp32_matmul_tflops": 2 * 8192 ** 3 / mm["median_s"] / 1e12}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/ops.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="smaller sizes (smoke run)")
    parser.add_argument("--only", nargs="*", choices=["perturb", "hu_window", "vq", "occlusion"])
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)
    benches = {"perturb": bench_perturb, "hu_window": bench_hu_window, "vq": bench_vq, "occlusion": bench_occlusion}
    load_before = os.getloadavg()
    rows = [as_row(r, r["case"].split()[0], device=device.type, dtype="int16" if "int16" in r["case"] else "float32")
            for r in run_benches(benches, args.only, device, args.quick)]  # the case names start with the op
    write_run(args.out, rows, script="bench_ops.py", argv=argv, device=device, loadavg_before=load_before,
              ceilings=device_ceilings(device))


if __name__ == "__main__":
    main()
