"""Triton kernel for perturb: out[b, i] = keep[b, mask[i]] ? x[i] : baseline[i].

Grid: (element blocks, groups of ROWS perturbations). Each program loads its block of x, ids and
baseline once and writes ROWS output rows, gathering keep[b, id] from the tiny [B, F] table.
ROWS = 16 (the row loop is not unrolled, so it costs no registers): for up to 16 perturbations the
inputs cross HBM once, and the traffic is the output's plus one read of x and the ids.
"""
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard


@triton.jit
def _perturb_kernel(x_ptr, mask_ptr, keep_ptr, base_ptr, out_ptr, numel, n_rows, n_features,
                    BASE_SCALAR: tl.constexpr, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < numel
    x = tl.load(x_ptr + offs, mask=valid)
    if BASE_SCALAR:
        base = tl.load(base_ptr)
    else:
        base = tl.load(base_ptr + offs, mask=valid)
    ids = tl.load(mask_ptr + offs, mask=valid, other=0).to(tl.int64)
    # Ids outside [0, F) never index keep (the launcher's caller normally rejects them first).
    id_ok = valid & (ids >= 0) & (ids < n_features)
    row0 = tl.program_id(1).to(tl.int64) * ROWS
    for b in range(row0, tl.minimum(row0 + ROWS, n_rows)):
        kept = tl.load(keep_ptr + b * n_features + ids, mask=id_ok, other=0)
        y = tl.where(kept != 0, x, base)
        tl.store(out_ptr + b * numel + offs, y, mask=valid)


def perturb_forward(x, mask, keep, base, out, rows_per_program=16, block=1024):
    """x, mask: contiguous [N]; keep: uint8 [B, F]; base: [N] or [1]; out: contiguous [B, N]."""
    numel = x.numel()
    n_rows, n_features = keep.shape
    grid = (triton.cdiv(numel, block), triton.cdiv(n_rows, rows_per_program))
    with device_guard(x):
        _perturb_kernel[grid](x, mask, keep, base, out, numel, n_rows, n_features,
                              BASE_SCALAR=base.numel() == 1, ROWS=rows_per_program, BLOCK=block, num_warps=4)
    return out
