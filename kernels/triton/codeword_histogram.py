"""Triton kernel for ``codeword_histogram``: counts of codeword indices per row (block-local
histograms, then one relaxed atomic per touched bin; see ``_block_histogram.py``)."""
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard, triton_module

_add_block_histogram = triton_module("_block_histogram")._add_block_histogram
block_histogram_config = triton_module("_block_histogram").block_histogram_config


@triton.jit
def _codeword_histogram_kernel(idx_ptr, out_ptr, total, L, K, PER_BLOCK: tl.constexpr,
                               NUM_BINS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    idx = tl.load(idx_ptr + offs, mask=valid, other=0).to(tl.int64)
    # The caller has checked the range; the mask only keeps a bad index from writing elsewhere.
    ok = valid & (idx >= 0) & (idx < K)
    _add_block_histogram(out_ptr, offs, ok, idx, total, L, K, PER_BLOCK, NUM_BINS, BLOCK)


def codeword_histogram_forward(indices, counts, block=1024):
    """indices: contiguous int32/int64 [B, L] in [0, K); counts: zeroed int64 [B, K], added to."""
    total = indices.numel()
    length, k = indices.shape[1], counts.shape[1]
    per_block, num_bins = block_histogram_config(length, k, block)
    with device_guard(indices):
        _codeword_histogram_kernel[(triton.cdiv(total, block),)](
            indices, counts, total, length, k, PER_BLOCK=per_block, NUM_BINS=num_bins, BLOCK=block)
    return counts
