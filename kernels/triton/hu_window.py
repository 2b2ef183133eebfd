"""Triton kernel for hu_window: one pass over the volume writes every window.

The compute type is a compile-time choice (float64 for float64 outputs, else float32), so ``v``
keeps one type through the kernel. Window rows are reached by advancing a pointer by ``numel``
(pointer arithmetic is 64-bit), so ``W * numel`` past 2^31 cannot overflow.
"""
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard


@triton.jit
def _hu_window_kernel(in_ptr, lower_ptr, inv_width_ptr, out_ptr, numel, n_windows,
                      COMPUTE_F64: tl.constexpr, BLOCK: tl.constexpr):
    compute = tl.float64 if COMPUTE_F64 else tl.float32
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    v = tl.load(in_ptr + offs, mask=valid, other=0).to(compute)
    out = out_ptr + offs
    for w in range(n_windows):
        lower = tl.load(lower_ptr + w).to(compute)  # float64 tensors: exact for float64 outputs
        inv = tl.load(inv_width_ptr + w).to(compute)
        y = tl.minimum(tl.maximum((v - lower) * inv, 0.0), 1.0)
        tl.store(out, y.to(out_ptr.dtype.element_ty), mask=valid)
        out += numel


def hu_window_forward(volume, lowers, inv_widths, out, block=1024):
    """volume: contiguous [N]; lowers/inv_widths: float64 [W] on the volume's device; out: [W, N]."""
    numel = volume.numel()
    with device_guard(volume):
        _hu_window_kernel[(triton.cdiv(numel, block),)](
            volume, lowers, inv_widths, out, numel, lowers.numel(),
            COMPUTE_F64=out.dtype.itemsize == 8, BLOCK=block, num_warps=4)
    return out
