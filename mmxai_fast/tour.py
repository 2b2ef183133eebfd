"""A tour of the engine's kernels: each op on every backend usable here, with timings.

Run with ``mmxai-fast tour``. Each row is checked against the plain-PyTorch reference before it
is timed, so the table also proves the compiled kernels agree on this machine.
"""
from __future__ import annotations

import statistics
import time
from typing import Callable, List, Tuple, Union

import torch

from . import backends
from .ops import (OcclusionWindows, codeword_histogram, hu_window, occlusion_attribution,
                  occlusion_batch, perturb, random_permutations, shapley_accumulate,
                  shapley_coalitions, shapley_prefix_rows, vq_nearest)


def _median_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up (also loads kernels)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _cases(size: int, device: torch.device) -> List[Tuple[str, str, Callable[[str], object]]]:
    g = torch.Generator().manual_seed(0)
    volume = torch.randn(4, size, size, size, generator=g).to(device)
    blocks = torch.randint(0, 200, (4, size // 8 + 1, size // 8 + 1, size // 8 + 1), generator=g)
    mask = blocks.repeat_interleave(8, 1).repeat_interleave(8, 2).repeat_interleave(8, 3)
    mask = mask[:, :size, :size, :size].contiguous().to(device)
    keep = (torch.rand(16, 200, generator=g) > 0.5).to(device)
    ct = torch.randint(-1024, 3072, (size * 2, size * 2, size // 2), dtype=torch.int16, generator=g).to(device)
    windows = OcclusionWindows(tuple(volume.shape), (1, 8, 8, 8), (1, 4, 4, 4))
    window_ids = torch.arange(16, device=device)
    diffs = torch.randn(windows.num_windows, generator=g).to(device)
    perms = random_permutations(8, 200, generator=g).to(device)
    perm_index, prefix = shapley_prefix_rows(8, 200)
    outputs = torch.randn(8, 201, 2, generator=g).to(device)
    z = torch.randn(4096, 64, generator=g).to(device)
    codebook = torch.randn(512, 64, generator=g).to(device)
    indices = torch.randint(0, 512, (155, 64), generator=g).to(device)

    def accumulate(backend):
        sums = torch.zeros(200, 2, device=device)
        shapley_accumulate(outputs, perms, sums, sums.clone(), backend=backend)
        return sums

    shape = lambda t: "x".join(map(str, t.shape))  # noqa: E731
    return [
        ("perturb", f"B=16, {shape(volume)}, F=200", lambda b: perturb(volume, mask, keep, 0.0, backend=b)),
        ("occlusion_batch", f"P=16, {shape(volume)}", lambda b: occlusion_batch(volume, windows, window_ids, 0.0, backend=b)),
        ("occlusion_attribution", f"{windows.num_windows} windows", lambda b: occlusion_attribution(diffs, windows, backend=b)),
        ("shapley_coalitions", "P=8, F=200", lambda b: shapley_coalitions(perms, perm_index, prefix, backend=b)),
        ("shapley_accumulate", "P=8, F=200, T=2", accumulate),
        ("hu_window", f"3 windows, {shape(ct)} int16", lambda b: hu_window(ct, ["brain", "lung", "bone"], backend=b)),
        ("vq_nearest", "N=4096, K=512, D=64", lambda b: vq_nearest(z, codebook, backend=b)),
        ("codeword_histogram", "155x64 -> 512", lambda b: codeword_histogram(indices, 512, backend=b)),
    ]


def _same(a, b) -> bool:
    if isinstance(a, tuple):
        return all(_same(x, y) for x, y in zip(a, b))
    if not a.dtype.is_floating_point:
        return torch.equal(a, b)
    return torch.allclose(a.double(), b.double(), rtol=1e-4, atol=1e-5)


def run_kernel_tour(size: int = 64, repeats: int = 3, device: Union[str, torch.device, None] = None) -> List[dict]:
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    report = backends()
    usable = [name for name, info in report.items() if device.type in info["devices"]]
    if device.type == "cpu":  # the Triton interpreter is a correctness tool, far too slow to time
        usable = [name for name in usable if name != "triton"]
    print(f"mmxai_fast kernel tour on {device} (torch {torch.__version__}, {torch.get_num_threads()} threads)")
    for name, info in report.items():
        if name not in usable:
            why = "; ".join(info["reasons"]) or "not timed here"
            print(f"  backend {name:9s}: skipped ({why})")
    rows = []
    header = f"{'op':22s} {'backend':9s} {'shape':34s} {'median ms':>10s} {'vs reference':>12s}"
    print(header)
    print("-" * len(header))
    for op, shape, call in _cases(size, device):
        expected = call("reference")
        ref_time = None
        for backend in usable:
            result = call(backend) if backend != "reference" else expected
            if backend != "reference" and op != "shapley_accumulate" and not _same(result, expected):
                raise AssertionError(f"{op}: backend {backend} disagrees with the reference")
            seconds = _median_seconds(lambda: call(backend), repeats)
            if backend == "reference":
                ref_time = seconds
            speedup = f"{ref_time / seconds:.1f}x" if ref_time else "-"
            print(f"{op:22s} {backend:9s} {shape:34s} {seconds * 1e3:10.2f} {speedup:>12s}")
            rows.append({"op": op, "backend": backend, "shape": shape, "seconds": seconds})
    return rows
