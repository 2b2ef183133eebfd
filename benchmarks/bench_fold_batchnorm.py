"""Per-call gain of the ``fold_batchnorm`` policy: one batch-1 4x64^3 call of the drop-in models
(VGG-like, DenseNet-like, MONAI DenseNet-121; BatchNorm statistics randomised so folding is not a
no-op) as the model itself and as the folded copy, both under inference mode and the oneDNN conv3d
policy (what ``mmxai-fast run`` calls), in NCDHW and channels_last_3d; the two alternate over
``--rounds`` and each keeps its best round's median.

    PYTHONPATH=$PWD python benchmarks/bench_fold_batchnorm.py --out benchmarks/results/fold_batchnorm_cpu.json
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import best_of_rounds, row, write_run  # noqa: E402
from dropin_pipeline import build_model  # noqa: E402

from mmxai_fast._malloc import keep_freed_memory  # noqa: E402
from mmxai_fast.attr._fold_batchnorm import fold_batchnorm  # noqa: E402
from mmxai_fast.attr._onednn_conv import onednn_conv3d  # noqa: E402
from mmxai_fast.phantom import make_brain_phantom  # noqa: E402


def _randomise(model: torch.nn.Module) -> torch.nn.Module:
    gen = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) * 0.4 - 0.2)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return model


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="benchmarks/results/fold_batchnorm_cpu.json")
    parser.add_argument("--models", nargs="+", default=["vgg", "densenet", "monai-densenet121"])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=8, help="timed calls per round")
    args = parser.parse_args(argv)
    load_before = os.getloadavg()
    keep_freed_memory()  # as under mmxai-fast run
    x = torch.as_tensor(make_brain_phantom((64,) * 3, grade="high", seed=0).image).unsqueeze(0)
    layouts = {"ncdhw": x, "channels_last_3d": x.contiguous(memory_format=torch.channels_last_3d)}
    rows = []
    for name in args.models:
        model = _randomise(build_model(name))
        folded, note = fold_batchnorm(model)
        assert folded is not None, note
        with torch.inference_mode(), onednn_conv3d():
            err = float((folded(x) - model(x)).abs().max() / model(x).abs().max())
            for layout, inp in layouts.items():
                best = best_of_rounds({"model": lambda: model(inp), "folded": lambda: folded(inp)}, args.rounds,
                                      args.repeats)
                for impl in ("model", "folded"):
                    m = best[impl]
                    rows.append(row("fold_batchnorm", impl, f"{name} batch 1 {layout}", device="cpu", dtype="float32",
                                    median_s=m["median_s"], iqr_s=m["iqr_s"],
                                    ratio=best["model"]["median_s"] / m["median_s"], folded=note,
                                    max_rel_err=err, threads=torch.get_num_threads()))
                print(f"{name:18s} {layout:17s} model {best['model']['median_s'] * 1e3:7.1f} ms  folded "
                      f"{best['folded']['median_s'] * 1e3:7.1f} ms  {rows[-1]['ratio']:.2f}x  ({note}; rel err "
                      f"{err:.1e})", flush=True)
    write_run(Path(args.out), rows, script="benchmarks/bench_fold_batchnorm.py", argv=argv or sys.argv[1:],
              device=torch.device("cpu"), loadavg_before=load_before)


if __name__ == "__main__":
    main()
