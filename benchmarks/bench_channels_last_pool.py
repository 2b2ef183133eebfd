"""Gain of the channels-last 2x2x2 average pool (:mod:`mmxai_fast.attr._channels_last_pool`): the
pool alone on DenseNet-like transition activations (PyTorch in NCDHW, PyTorch on a
channels_last_3d input, ours on it), and one batch-1 4x64^3 call of the drop-in models in
channels_last_3d with and without it, under inference mode and the oneDNN conv3d policy (what
``mmxai-fast run`` calls). The ways alternate over ``--rounds``; each keeps its best round's median.

    PYTHONPATH=$PWD python benchmarks/bench_channels_last_pool.py --out benchmarks/results/channels_last_pool_cpu.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import best_of_rounds, row, write_run  # noqa: E402
from dropin_pipeline import build_model  # noqa: E402

from mmxai_fast._malloc import keep_freed_memory  # noqa: E402
from mmxai_fast.attr._channels_last_pool import avg_pool3d, channels_last_pooling  # noqa: E402
from mmxai_fast.attr._onednn_conv import onednn_conv3d  # noqa: E402
from mmxai_fast.phantom import make_brain_phantom  # noqa: E402

CL = torch.channels_last_3d


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/channels_last_pool_cpu.json")
    parser.add_argument("--models", nargs="+", default=["densenet", "monai-densenet121"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per round")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    keep_freed_memory()  # as under mmxai-fast run
    rows = []
    torch.manual_seed(0)
    with torch.inference_mode():
        for channels, size in ((16, 64), (24, 32), (128, 16)):
            x = torch.randn(1, channels, size, size, size)
            xc = x.contiguous(memory_format=CL)
            exact = F.avg_pool3d(x.double(), 2)
            err = float((avg_pool3d(xc, 2).double() - exact).abs().max() / exact.abs().max())
            ways = {"pytorch ncdhw": lambda: F.avg_pool3d(x, 2), "pytorch channels_last_3d": lambda: F.avg_pool3d(xc, 2),
                    "mmxai_fast channels_last_3d": lambda: avg_pool3d(xc, 2)}
            best = best_of_rounds(ways, args.rounds, args.repeats * 4)
            base = best["pytorch channels_last_3d"]["median_s"]
            for impl, m in best.items():
                rows.append(row("avg_pool3d", impl, f"{channels}x{size}^3 kernel 2", device="cpu", dtype="float32",
                                median_s=m["median_s"], iqr_s=m["iqr_s"], ratio=base / m["median_s"],
                                max_rel_err=err, threads=torch.get_num_threads()))
            print(f"avg_pool3d {channels}x{size}^3: " + "  ".join(
                f"{impl} {m['median_s'] * 1e3:.2f} ms" for impl, m in best.items()) + f"  (ours {rows[-1]['ratio']:.1f}x "
                f"of PyTorch on channels_last_3d, rel err {err:.1e})", flush=True)

        x = torch.as_tensor(make_brain_phantom((64,) * 3, grade="high", seed=0).image).unsqueeze(0)
        xc = x.contiguous(memory_format=CL)
        for name in args.models:
            model = build_model(name)
            with onednn_conv3d():
                expected = model(x)
                with channels_last_pooling():
                    err = float((model(xc) - expected).abs().max() / expected.abs().max())

                def pooled(model=model):
                    with channels_last_pooling():
                        return model(xc)

                best = best_of_rounds({"pytorch pool": lambda: model(xc), "channels_last pool": pooled}, args.rounds,
                             args.repeats)
            base = best["pytorch pool"]["median_s"]
            for impl, m in best.items():
                rows.append(row("model call", impl, f"{name} batch 1 channels_last_3d", device="cpu", dtype="float32",
                                median_s=m["median_s"], iqr_s=m["iqr_s"], ratio=base / m["median_s"],
                                max_rel_err=err, threads=torch.get_num_threads()))
            print(f"{name:18s} batch 1 channels_last_3d: PyTorch's pool {base * 1e3:.1f} ms, channels-last pool "
                  f"{best['channels_last pool']['median_s'] * 1e3:.1f} ms: {rows[-1]['ratio']:.2f}x "
                  f"(rel err {err:.1e})", flush=True)
    write_run(Path(args.out), rows, script="benchmarks/bench_channels_last_pool.py", argv=argv or sys.argv[1:],
              device=torch.device("cpu"), loadavg_before=load_before)


if __name__ == "__main__":
    main()
