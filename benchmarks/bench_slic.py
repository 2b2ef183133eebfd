"""mmxai_fast.ops.slic against scikit-image's slic, measured in one run; writes JSON.

    python benchmarks/bench_slic.py --out benchmarks/results/slic_cpu_2core.json [--quick]

The pipeline's use: a 4-modality 240x240x155 float32 brain-like phantom, one foreground mask,
superpixels per modality with modality-specific ids. scikit-image runs once per modality (as the
pipeline calls it); mmxai_fast takes all four in one call. The ratio is scikit-image's time /
mmxai_fast's. Quality (boundary recall against the phantom's tissue boundaries, under-segmentation
error, segment count, disconnected segments) is reported side by side, per modality mean.
Targets: >= 4x on the 2-core CPU; < 0.5 s on a GPU (triton backend, CUDA connectivity).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _harness import as_row, measure, print_rows, write_run  # noqa: E402

from mmxai_fast.ops import slic  # noqa: E402
from mmxai_fast.ops.slic_metrics import segment_quality, tissue_phantom  # noqa: E402


def mean_quality(labels, tissue, mask):
    per = [segment_quality(labels[m], tissue, mask, background=0) for m in range(labels.shape[0])]
    return {key: float(np.mean([q[key] for q in per])) for key in per[0]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/slic_cpu_2core.json"))
    parser.add_argument("--quick", action="store_true", help="4x120x120x78 (smoke run)")
    parser.add_argument("--n-segments", type=int, default=500, help="superpixels per modality")
    parser.add_argument("--compactness", type=float, default=0.1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    from skimage.segmentation import slic as skimage_slic

    shape = (120, 120, 78) if args.quick else (240, 240, 155)
    n_segments = max(8, args.n_segments // 8) if args.quick else args.n_segments
    volumes, tissue = tissue_phantom(shape, 4, seed=0)
    load_before = os.getloadavg()
    mask = tissue > 0
    kwargs = dict(n_segments=n_segments, compactness=args.compactness, mask=mask, channel_axis=None)
    case = f"slic 4x{'x'.join(map(str, shape))} f32 mask n_segments={n_segments}/modality"
    cpu = torch.device("cpu")
    x = torch.from_numpy(volumes)

    ours_labels = slic(x, modality_axis=0, backend="cpu", **kwargs).numpy()
    ours = measure(lambda: slic(x, modality_axis=0, backend="cpu", **kwargs), cpu, repeats=args.repeats, warmup=0)
    # scikit-image is slow: one timed pass over the four modalities (its labels are kept).
    start = time.perf_counter()
    sk_labels = np.stack([skimage_slic(volumes[m], **kwargs) for m in range(4)])
    sk_s = time.perf_counter() - start
    sk = {"median_s": sk_s, "min_s": sk_s, "max_s": sk_s, "iqr_s": 0.0, "repeats": 1}
    q_ours, q_sk = mean_quality(ours_labels, tissue, mask), mean_quality(sk_labels, tissue, mask)
    rows = [
        dict(case=case, impl="mmxai_fast.ops.slic (cpu, 4 modalities)", **ours, quality=q_ours),
        dict(case=case, impl="skimage slic x4 (per modality)", **sk, quality=q_sk,
             speedup=sk["median_s"] / ours["median_s"], target=4),
    ]
    if torch.cuda.is_available():
        gpu = torch.device("cuda")
        xg, mg = x.to(gpu), torch.from_numpy(mask).to(gpu)
        gkw = dict(kwargs, mask=mg)
        gpu_labels = slic(xg, modality_axis=0, backend="triton", **gkw).cpu().numpy()
        timed = measure(lambda: slic(xg, modality_axis=0, backend="triton", **gkw), gpu, repeats=args.repeats)
        rows.append(dict(case=case, impl=f"mmxai_fast.ops.slic (triton+cuda, {torch.cuda.get_device_name(gpu)})",
                         **timed, quality=mean_quality(gpu_labels, tissue, mask),
                         speedup_vs_skimage=sk["median_s"] / timed["median_s"], target_s=0.5,
                         agreement_with_cpu=float((gpu_labels == ours_labels).mean())))
    print_rows(rows)
    print(f"{'quality (mean per modality)':44s} {'boundary recall':>16s} {'UE':>8s} {'segments':>9s} {'disconn.':>9s}")
    for r in rows:
        q = r["quality"]
        print(f"{r['impl']:44s} {q['boundary_recall']:16.4f} {q['undersegmentation_error']:8.4f} "
              f"{q['n_segments']:9.1f} {q['disconnected_segments']:9.1f}")
    rows = [as_row(r, "slic", device="cuda" if "cuda" in r["impl"] else "cpu", dtype="float32") for r in rows]
    write_run(args.out, rows, script="bench_slic.py", argv=argv, device=cpu, loadavg_before=load_before)


if __name__ == "__main__":
    main()
