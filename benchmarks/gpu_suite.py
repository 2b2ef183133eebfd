"""One GPU check: every Triton op against its reference on CUDA tensors at real sizes, then the
GPU benchmarks against measured ceilings (a copy kernel for bandwidth, a matmul for TFLOP/s);
one process, JSON out.

    python benchmarks/gpu_suite.py --out benchmarks/results/gpu_suite_<device>.json
    python benchmarks/gpu_suite.py --dry-run [--archs 80,90] [--select perturb] [--out FILE]

``--dry-run`` needs no GPU: it compiles every Triton kernel ahead of time for each architecture
through the launchers' own argument construction at real sizes (``mmxai_fast/_aot_cases.py``),
prints registers / spills / shared memory per kernel and exits non-zero on a compile error or a
spill in a memory-bound kernel. ``tests/test_aot_compile.py`` runs it in CI.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def dry_run(archs, select=""):
    os.environ["TRITON_INTERPRET"] = "0"
    from mmxai_fast._aot_cases import compile_all

    rows = compile_all(archs, select)
    problems = [r for r in rows if r["error"]]
    problems += [r for r in rows if not r["error"] and r["memory_bound"] and r["spill_stores"] + r["spill_loads"]]
    problems += [r for r in rows if not r["error"] and not r["target"].startswith(f"sm_{r['arch']}")]
    for r in rows:
        if r["error"]:
            print(f"sm_{r['arch']} {r['case']}: FAILED {r['error']}")
        else:
            print(f"sm_{r['arch']} {r['case']:44s} {r['kernel']:36s} {r['target']:7s} regs {r['registers']:3d} "
                  f"spills {r['spill_stores']}/{r['spill_loads']} B  smem {r['shared']} B")
    return dict(mode="dry-run", archs=list(archs), kernels=rows, problems=len(problems)), not problems


def _time(fn, repeats=20):
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    times.sort()
    return times[len(times) // 2]


def _checks(device):
    """Each op's triton backend against its reference at real sizes (exact for integer outputs)."""
    import torch

    from mmxai_fast.ops import hu_window, perturb, vq_nearest
    from mmxai_fast.ops.hu_window import hu_window_reference
    from mmxai_fast.ops.perturb import perturb_reference
    from mmxai_fast.ops.vq_nearest import vq_nearest_reference

    g = torch.Generator(device=device).manual_seed(0)
    results = []
    x = torch.randn(4, 240, 240, 155, device=device, generator=g)
    mask = torch.randint(0, 64, x.shape, device=device, generator=g)
    keep = torch.rand(16, 64, device=device, generator=g) < 0.5
    out = perturb(x, mask, keep, 0.0, backend="triton")
    results.append(dict(op="perturb", equal=bool(torch.equal(out, perturb_reference(x, mask, keep, 0.0)))))
    ct = torch.randint(-1024, 3071, (512, 512, 600), device=device, dtype=torch.int16, generator=g)
    levels, widths = [40.0, 50.0, 400.0], [80.0, 150.0, 1800.0]
    for out_dtype in (torch.float32, torch.float64):
        got = hu_window(ct, list(zip(levels, widths)), out_dtype=out_dtype, backend="triton")
        ref = hu_window_reference(ct, levels, widths, out_dtype=out_dtype)
        results.append(dict(op=f"hu_window[{out_dtype}]", max_abs_err=float((got - ref).abs().max())))
    z = torch.randn(2**16, 64, device=device, generator=g)
    e = torch.randn(512, 64, device=device, generator=g)
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        idx, _ = vq_nearest(z.to(dtype), e.to(dtype), backend="triton")
        ref, _ = vq_nearest_reference(z.to(dtype), e.to(dtype))
        results.append(dict(op=f"vq_nearest[{dtype}]", index_mismatches=int((idx != ref).sum())))
    return results


def gpu_benchmarks(device):
    import torch

    from mmxai_fast.ops import hu_window, perturb, vq_nearest

    rows = []
    big = torch.empty(2**28, device=device)  # 1 GiB
    copy_s = _time(lambda: big.clone())
    ceiling_gbs = 2 * big.numel() * 4 / copy_s / 1e9
    rows.append(dict(case="ceiling: copy 1 GiB (read + write)", gbs=ceiling_gbs))
    a = torch.randn(8192, 8192, device=device)
    torch.backends.cuda.matmul.allow_tf32 = True
    mm_s = _time(lambda: a @ a)
    ceiling_tf32 = 2 * 8192**3 / mm_s / 1e12
    rows.append(dict(case="ceiling: matmul 8192^3 TF32", tflops=ceiling_tf32))
    torch.backends.cuda.matmul.allow_tf32 = False
    ab = a.to(torch.bfloat16)
    rows.append(dict(case="ceiling: matmul 8192^3 bf16", tflops=2 * 8192**3 / _time(lambda: ab @ ab) / 1e12))

    x = torch.randn(4, 240, 240, 155, device=device)
    mask = torch.randint(0, 64, x.shape, device=device, dtype=torch.int32)
    keep = torch.rand(16, 64, device=device) < 0.5
    t = _time(lambda: perturb(x, mask, keep, 0.0, backend="triton"))
    moved = x.numel() * (4 + 4) + 16 * x.numel() * 4
    rows.append(dict(case="perturb 16 x 4x240x240x155 f32", s=t, gbs=moved / t / 1e9, of_copy=moved / t / 1e9 / ceiling_gbs))
    ct = torch.zeros((512, 512, 600), device=device, dtype=torch.int16)
    t = _time(lambda: hu_window(ct, [(40.0, 80.0), (50.0, 150.0), (400.0, 1800.0)], backend="triton"))
    moved = ct.numel() * (2 + 3 * 4)
    rows.append(dict(case="hu_window 3 windows 512x512x600 int16 -> f32", s=t, gbs=moved / t / 1e9,
                     of_copy=moved / t / 1e9 / ceiling_gbs))
    z, e = torch.randn(10**6, 64, device=device), torch.randn(512, 64, device=device)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        zz, ee = z.to(dtype), e.to(dtype)
        t = _time(lambda zz=zz, ee=ee: vq_nearest(zz, ee, backend="triton"))
        tflops = 2 * 10**6 * 512 * 64 / t / 1e12
        rows.append(dict(case=f"vq_nearest 1e6 x 512 x 64 {dtype}", s=t, tflops=tflops, of_tf32_matmul=tflops / ceiling_tf32))
    return rows


def _dtype(case: str) -> str:
    for name in ("bfloat16", "float16", "int16", "uint8"):
        if name in case:
            return name
    return "float32"


def schema_rows(report: dict) -> list:
    """Results rows: one per compiled kernel (dry run: nothing timed, ``median_s`` null) or per
    GPU measurement (``median_s``: the median of 20 CUDA-event timings; spread not kept)."""
    from _harness import row

    if report["mode"] == "dry-run":
        return [row(r["case"].split("[")[0], "triton (AOT compile)", r["case"], device="cuda", dtype=_dtype(r["case"]),
                    median_s=None, **{k: v for k, v in r.items() if k != "case"}) for r in report["kernels"]]
    return [row(r["case"].split()[0].rstrip(":"), "torch" if r["case"].startswith("ceiling") else "triton", r["case"],
                device="cuda", dtype=_dtype(r["case"]), median_s=r.get("s"), **{k: v for k, v in r.items() if k != "case"})
            for r in report["benchmarks"]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="compile only (no GPU needed)")
    parser.add_argument("--archs", default="80,90", help="dry run: CUDA architectures (default 80,90)")
    parser.add_argument("--select", default="", help="dry run: only cases whose name contains this")
    parser.add_argument("--out", help="JSON file to write")
    args = parser.parse_args(argv)
    start = time.time()
    if args.dry_run:
        report, ok = dry_run([int(a) for a in args.archs.split(",")], args.select)
    else:
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device: use --dry-run to compile only")
        device = torch.device("cuda")
        report = dict(mode="gpu", device=torch.cuda.get_device_name(device), torch=torch.__version__,
                      checks=_checks(device), benchmarks=gpu_benchmarks(device))
        ok = all(c.get("equal", True) and c.get("index_mismatches", 0) == 0 and c.get("max_abs_err", 0) < 1e-6
                 for c in report["checks"])
    report["wall_s"] = time.time() - start
    if args.out:
        from _harness import write_results

        write_results(Path(args.out), schema_rows(report),
                      {k: v for k, v in report.items() if k not in ("kernels", "benchmarks")})
    print(json.dumps({k: v for k, v in report.items() if k not in ("kernels",)}, indent=1, default=str)[:4000])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
