"""Triton kernel for hu_window: one pass over the volume writes every window."""
import triton
import triton.language as tl


@triton.jit
def _hu_window_kernel(in_ptr, lower_ptr, inv_width_ptr, out_ptr, numel, n_windows,
                      BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    v = tl.load(in_ptr + offs, mask=valid, other=0)
    compute_f64 = out_ptr.dtype.element_ty == tl.float64
    if compute_f64:
        v = v.to(tl.float64)
    else:
        v = v.to(tl.float32)
    for w in range(n_windows):
        lower = tl.load(lower_ptr + w)
        inv = tl.load(inv_width_ptr + w)
        if not compute_f64:
            lower = lower.to(tl.float32)
            inv = inv.to(tl.float32)
        y = (v - lower) * inv
        y = tl.minimum(tl.maximum(y, 0.0), 1.0)
        tl.store(out_ptr + w * numel + offs, y.to(out_ptr.dtype.element_ty), mask=valid)


def hu_window_forward(volume, lowers, inv_widths, out):
    """volume: contiguous [N]; lowers/inv_widths: float64 [W] on the volume's device; out: [W, N]."""
    numel = volume.numel()
    block = 1024
    grid = (triton.cdiv(numel, block),)
    _hu_window_kernel[grid](volume, lowers, inv_widths, out, numel, lowers.numel(), BLOCK=block)
    return out
