"""Every Triton kernel, reached through its launcher at real sizes on ``meta`` tensors.

``AOT_CASES`` maps a case name to ``(memory_bound, build)``; ``build()`` runs the op's own
launcher (``mmxai_fast/ops/<op>.py``'s ``_<op>_triton``, or the ``*_forward`` / ``*_launch``
function it calls) on meta tensors, so inside ``_aot.aot_target(arch)`` every launch compiles for
that architecture instead of running. Sizes: 16 perturbations of a 4 x 240 x 240 x 155 BraTS
volume, a 512 x 512 x 600 int16 CT, 10^6 latents x 512 codewords x 64 features.
"""
from __future__ import annotations

import math
from typing import Callable, Dict, Tuple

import torch

from ._kernels import triton_module

META = torch.device("meta")
BRATS = (4, 240, 240, 155)
CT = (512, 512, 600)
FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _empty(shape, dtype):
    return torch.empty(shape, dtype=dtype, device=META)


def _perturb(dtype, mask_dtype=torch.int64, full_baseline=False):
    from .ops.perturb import _perturb_triton

    x = _empty(BRATS, dtype)
    keep = _empty((16, 64), torch.bool)
    baseline = _empty(BRATS, dtype) if full_baseline else _empty((), dtype)
    _perturb_triton(x, _empty(BRATS, mask_dtype), keep, baseline, validate_ids=False)


def _hu_window(dtype, out_dtype):
    from .ops.hu_window import _hu_window_triton

    _hu_window_triton(_empty(CT, dtype), [40.0, 50.0, 400.0], [80.0, 150.0, 1800.0], out_dtype)


def _windows():
    from .ops.occlusion import OcclusionWindows

    return OcclusionWindows(BRATS, (1, 16, 16, 16), (1, 8, 8, 8))


def _occlusion_batch(dtype, full_baseline=False):
    from .ops.occlusion import _occlusion_batch_triton

    windows = _windows()
    baseline = _empty(BRATS, dtype) if full_baseline else _empty((), dtype)
    _occlusion_batch_triton(_empty(BRATS, dtype), windows, _empty((16,), torch.int64), baseline)


def _occlusion_attribution(dtype):
    from .ops.occlusion import _occlusion_attribution_triton

    windows = _windows()
    _occlusion_attribution_triton(_empty((2, windows.num_windows), dtype), windows)


def _vq_nearest(dtype):
    from .ops.vq_nearest import _vq_nearest_triton

    _vq_nearest_triton(_empty((10**6, 64), dtype), _empty((512, 64), dtype))


def _codeword_histogram(index_dtype):
    from .ops.codeword_histogram import _codeword_histogram_triton

    _codeword_histogram_triton(_empty((16, 155 * 64), index_dtype), 512, 1)


def _thresholded_value_histogram(dtype):
    from .ops.thresholded_value_histogram import _thresholded_value_histogram_triton

    volume = (16, math.prod(BRATS[1:]))
    _thresholded_value_histogram_triton(_empty(volume, dtype), _empty(volume, torch.float32), 0.5,
                                        -1024, 3071, 1)


def _shapley(dtype):
    from .ops.shapley import _shapley_accumulate_triton, _shapley_coalitions_triton

    perms = _empty((16, 4096), torch.int64)
    _shapley_coalitions_triton(perms, _empty((256,), torch.int64), _empty((256,), torch.int64))
    _shapley_accumulate_triton(_empty((16 * 4097, 3), dtype), perms, _empty((4096, 3), dtype), _empty((4096, 3), dtype))


def _slic(dtype):
    kernels = triton_module("slic")
    channels, shape = 4, BRATS[1:]
    n_vox = math.prod(shape)
    feats = _empty((channels,) + shape, dtype)
    centers = _empty((1000, 3 + channels), torch.float64)
    bits = torch.int64 if dtype == torch.float64 else torch.int32
    labels = _empty((n_vox,), torch.int32)
    scalars = _empty((5,), torch.float64)
    for has_mask in (False, True):
        kernels.slic_assign_launch(feats, _empty((n_vox,), torch.uint8) if has_mask else labels, centers,
                                   _empty((1000, 6), torch.int64), _empty((n_vox,), bits), labels, scalars,
                                   34, has_mask, False)
    kernels.slic_update_launch(feats, labels, _empty((1000, 3 + channels), torch.int64),
                               _empty((1000,), torch.int64), scalars[4:])


def _uses_tensor_cores(kernel) -> bool:
    ptx = kernel.asm["ptx"]
    return "mma.sync" in ptx or "wgmma" in ptx


def compile_all(archs, select=""):
    """Compile every case whose name contains ``select`` for each architecture. Returns rows
    ``{arch, case, memory_bound, kernel, target, registers, spill_stores, spill_loads, shared,
    error}``; a failed case gives one row with ``error`` set."""
    from ._aot import aot_target, resource_usage

    rows = []
    for arch in archs:
        for name, (memory_bound, build) in AOT_CASES.items():
            if select not in name:
                continue
            base = dict(arch=arch, case=name, memory_bound=memory_bound)
            try:
                with aot_target(arch) as kernels:
                    build()
                for kernel in kernels:
                    usage = resource_usage(kernel)
                    rows.append(dict(base, kernel=usage.name, target=usage.arch, registers=usage.registers,
                                     spill_stores=usage.spill_stores, spill_loads=usage.spill_loads,
                                     shared=usage.shared, tensor_core=_uses_tensor_cores(kernel),
                                     python_float_args=kernel.python_float_args, error=None))
            except Exception as exc:  # reported per case; the caller fails on any
                rows.append(dict(base, kernel=None, error=f"{type(exc).__name__}: {exc}"[:3000]))
    return rows


def _cases() -> Dict[str, Tuple[bool, Callable[[], None]]]:
    cases: Dict[str, Tuple[bool, Callable[[], None]]] = {}

    def add(name, memory_bound, fn, *args, **kwargs):
        cases[name] = (memory_bound, lambda: fn(*args, **kwargs))

    for dtype in FLOATS + (torch.uint8, torch.int16):
        add(f"perturb[{dtype}]", True, _perturb, dtype)
    add("perturb[float32, full baseline]", True, _perturb, torch.float32, full_baseline=True)
    for mask_dtype in (torch.int32, torch.int16, torch.uint8):
        add(f"perturb[float32, mask {mask_dtype}]", True, _perturb, torch.float32, mask_dtype)
    for out_dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        add(f"hu_window[torch.int16 -> {out_dtype}]", True, _hu_window, torch.int16, out_dtype)
    for dtype in (torch.uint8, torch.int32, torch.float32, torch.float64):
        add(f"hu_window[{dtype} -> torch.float32]", True, _hu_window, dtype, torch.float32)
    for dtype in FLOATS:
        add(f"occlusion_batch[{dtype}]", True, _occlusion_batch, dtype)
    add("occlusion_batch[float32, full baseline]", True, _occlusion_batch, torch.float32, full_baseline=True)
    for dtype in (torch.float32, torch.float64):
        add(f"occlusion_attribution[{dtype}]", False, _occlusion_attribution, dtype)
    for dtype in FLOATS:
        add(f"vq_nearest[{dtype}]", False, _vq_nearest, dtype)
    for dtype in (torch.int32, torch.int64):
        add(f"codeword_histogram[{dtype}]", False, _codeword_histogram, dtype)
    for dtype in (torch.int16, torch.float32):
        add(f"thresholded_value_histogram[{dtype}]", False, _thresholded_value_histogram, dtype)
    for dtype in (torch.float32, torch.float64):
        add(f"shapley[{dtype}]", False, _shapley, dtype)
        add(f"slic[{dtype}]", False, _slic, dtype)
    return cases


AOT_CASES = _cases()
