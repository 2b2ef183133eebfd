"""Triton kernel for ``codeword_histogram``: counts of codeword indices, one atomic add per index."""
import triton
import triton.language as tl


@triton.jit
def _codeword_histogram_kernel(idx_ptr, out_ptr, total, L, K, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    idx = tl.load(idx_ptr + offs, mask=valid, other=0).to(tl.int64)
    batch = offs // L
    # The caller has checked the range; the mask only keeps a bad index from writing elsewhere.
    ok = valid & (idx >= 0) & (idx < K)
    tl.atomic_add(out_ptr + batch * K + idx, tl.full([BLOCK], 1, tl.int64), mask=ok)


def codeword_histogram_forward(indices, counts):
    """indices: contiguous int32/int64 [B, L] in [0, K); counts: zeroed int64 [B, K], added to."""
    total = indices.numel()
    block = 1024
    grid = (triton.cdiv(total, block),)
    _codeword_histogram_kernel[grid](indices, counts, total, indices.shape[1], counts.shape[1], BLOCK=block)
    return counts
