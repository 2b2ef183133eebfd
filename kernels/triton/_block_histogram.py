"""Shared Triton helper: add one block's integer bin counts to per-row histograms ``out [B, K]``.

With ``PER_BLOCK`` (the launcher sets it when a block spans at most two rows and those rows' bins
fit ``NUM_BINS``), the block first counts into a local histogram (``tl.histogram``) and then adds
only its non-zero bins: one atomic per touched bin instead of one per element. Otherwise each
element adds 1. Integer adds commute, so the counts are exact and order-free; nothing else is
ordered by these adds, so they are relaxed (no fence before each atomic).
"""
import triton
import triton.language as tl


@triton.jit
def _add_block_histogram(out_ptr, offs, hit, bin, total, L, K,
                         PER_BLOCK: tl.constexpr, NUM_BINS: tl.constexpr, BLOCK: tl.constexpr):
    batch = offs // L
    if PER_BLOCK:
        first = (tl.program_id(0).to(tl.int64) * BLOCK) // L * K  # flat offset of the block's first row
        key = tl.where(hit, batch * K + bin - first, 0).to(tl.int32)
        counts = tl.histogram(key, NUM_BINS, mask=hit)
        slots = tl.arange(0, NUM_BINS)
        tl.atomic_add(out_ptr + first + slots, counts.to(tl.int64),
                      mask=(counts > 0) & (first + slots < (total // L) * K), sem="relaxed")
    else:
        tl.atomic_add(out_ptr + batch * K + bin, tl.full(bin.shape, 1, tl.int64), mask=hit, sem="relaxed")


def block_histogram_config(L, K, block):
    """(PER_BLOCK, NUM_BINS) for rows of length ``L`` and ``K`` bins."""
    num_bins = triton.next_power_of_2(2 * K)
    per_block = L >= block and num_bins <= 4096
    return per_block, (num_bins if per_block else 1)
