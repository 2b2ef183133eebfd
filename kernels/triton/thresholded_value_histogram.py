"""Triton kernel for thresholded_value_histogram: one program per BLOCK elements, block-local
histograms then one relaxed atomic per touched bin (``_block_histogram.py``).

Atomic integer adds commute, so the counts are exact and deterministic whatever the order.
"""
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard, triton_module

_add_block_histogram = triton_module("_block_histogram")._add_block_histogram
block_histogram_config = triton_module("_block_histogram").block_histogram_config


@triton.jit
def _thresholded_value_histogram_kernel(values_ptr, scores_ptr, out_ptr, threshold_ptr, total, L, low, K,
                                        VALUES_FLOAT: tl.constexpr, PER_BLOCK: tl.constexpr,
                                        NUM_BINS: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = offs < total
    score = tl.load(scores_ptr + offs, mask=valid, other=0).to(tl.float64)
    threshold = tl.load(threshold_ptr)  # float64 from a tensor: a Python float argument would be float32
    hit = valid & (score > threshold)
    v = tl.load(values_ptr + offs, mask=hit, other=0)
    if VALUES_FLOAT:
        # Round half to even (torch.round): floor, then fix the exact .5 ties towards the even one.
        v = v.to(tl.float64)
        hit = hit & (v >= low - 1) & (v <= low + K)  # drops NaN/inf before any arithmetic on them
        v = tl.where(hit, v, 0.0)
        r = tl.floor(v + 0.5)
        tie = (r - v) == 0.5
        odd = (r - 2.0 * tl.floor(r * 0.5)) == 1.0
        r = tl.where(tie & odd, r - 1.0, r)
        hit = hit & (r >= low) & (r < low + K)  # NaN compares false
        bin = tl.where(hit, r - low, 0.0).to(tl.int64)
    else:
        bin = v.to(tl.int64) - low
        hit = hit & (bin >= 0) & (bin < K)
    _add_block_histogram(out_ptr, offs, hit, bin, total, L, K, PER_BLOCK, NUM_BINS, BLOCK)


def thresholded_value_histogram_forward(values, scores, threshold, low, counts):
    """values, scores: contiguous [B, L]; threshold: float64 [1] on their device; counts: zeroed
    int64 [B, K], added to."""
    total = values.numel()
    block = 1024
    per_block, num_bins = block_histogram_config(values.shape[1], counts.shape[1], block)
    with device_guard(values):
        _thresholded_value_histogram_kernel[(triton.cdiv(total, block),)](
            values, scores, counts, threshold, total, values.shape[1], int(low), counts.shape[1],
            VALUES_FLOAT=values.is_floating_point(), PER_BLOCK=per_block, NUM_BINS=num_bins, BLOCK=block)
    return counts
