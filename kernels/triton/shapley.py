"""Triton kernels for Shapley value sampling: inverse permutations, prefix coalition masks and the
deterministic per-feature accumulation of marginals (one program owns a feature x output tile and
walks the permutations in order; no atomics).

Grids are one-dimensional (axis 0 takes up to 2**31 - 1 programs) and every offset that can pass
2**31 is formed in int64 or by advancing pointers.
"""
import torch
import triton
import triton.language as tl


@triton.jit
def _ranks_kernel(perms_ptr, rank_ptr, F, n_blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    p = (pid // n_blocks).to(tl.int64)
    j = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    valid = j < F
    row = p * F
    feature = tl.load(perms_ptr + row + j, mask=valid, other=0)
    tl.store(rank_ptr + row + feature, j.to(tl.int32), mask=valid)


@triton.jit
def _coalitions_kernel(rank_ptr, perm_index_ptr, prefix_size_ptr, out_ptr, F, n_blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    r = (pid // n_blocks).to(tl.int64)
    f = (pid % n_blocks) * BLOCK + tl.arange(0, BLOCK)
    valid = f < F
    p = tl.load(perm_index_ptr + r)
    k = tl.load(prefix_size_ptr + r)
    rank = tl.load(rank_ptr + p * F + f, mask=valid, other=0)
    tl.store(out_ptr + r * F + f, (rank < k).to(tl.uint8), mask=valid)


@triton.jit
def _widen(x, compute: tl.constexpr):
    # Half types go through float32: bf16 <-> fp64 conversions are not supported everywhere.
    if x.dtype != tl.float64:
        x = x.to(tl.float32)
    return x.to(compute)


@triton.jit
def _narrow(x, dtype: tl.constexpr):
    if dtype != tl.float64:
        x = x.to(tl.float32)
    return x.to(dtype)


@triton.jit
def _accumulate_kernel(outputs_ptr, rank_ptr, sums_ptr, sumsq_ptr, P, F, Tn, perm_stride, n_t_blocks,
                       HAS_SUMSQ: tl.constexpr, COMPUTE: tl.constexpr,
                       BLOCK_F: tl.constexpr, BLOCK_T: tl.constexpr):
    pid = tl.program_id(0)
    f = (pid // n_t_blocks) * BLOCK_F + tl.arange(0, BLOCK_F)
    t = (pid % n_t_blocks) * BLOCK_T + tl.arange(0, BLOCK_T)
    f_valid = f < F
    mask = f_valid[:, None] & (t < Tn)[None, :]
    f = f.to(tl.int64)
    t = t.to(tl.int64)
    acc = tl.zeros([BLOCK_F, BLOCK_T], dtype=COMPUTE)
    acc_sq = tl.zeros([BLOCK_F, BLOCK_T], dtype=COMPUTE)
    # Advance pointers rather than multiply by p, so nothing overflows int32.
    rank_row = rank_ptr + f
    perm_base = outputs_ptr
    for _ in range(P):
        j = tl.load(rank_row, mask=f_valid, other=0).to(tl.int64)
        before = perm_base + (j * Tn)[:, None] + t[None, :]
        d = (_widen(tl.load(before + Tn, mask=mask, other=0), COMPUTE)
             - _widen(tl.load(before, mask=mask, other=0), COMPUTE))
        acc += d
        acc_sq += d * d
        rank_row += F
        perm_base += perm_stride
    index = f[:, None] * Tn + t[None, :]
    s = _widen(tl.load(sums_ptr + index, mask=mask, other=0), COMPUTE)
    tl.store(sums_ptr + index, _narrow(s + acc, sums_ptr.dtype.element_ty), mask=mask)
    if HAS_SUMSQ:
        q = _widen(tl.load(sumsq_ptr + index, mask=mask, other=0), COMPUTE)
        tl.store(sumsq_ptr + index, _narrow(q + acc_sq, sumsq_ptr.dtype.element_ty), mask=mask)


def shapley_ranks(perms):
    """perms: contiguous int64 [P, F] -> int32 [P, F] inverse permutations (rank[p, perms[p, j]] = j).

    Zero-initialised so rows that repeat a value still give in-bounds ranks."""
    num_perms, num_features = perms.shape
    rank = torch.zeros((num_perms, num_features), dtype=torch.int32, device=perms.device)
    if rank.numel():
        block = 1024
        n_blocks = triton.cdiv(num_features, block)
        _ranks_kernel[(num_perms * n_blocks,)](perms, rank, num_features, n_blocks, BLOCK=block)
    return rank


def shapley_coalitions_forward(rank, perm_index, prefix_size, out):
    """rank: int32 [P, F]; perm_index, prefix_size: contiguous int64 [R]; out: uint8 [R, F]."""
    num_rows, num_features = out.shape
    block = 1024
    n_blocks = triton.cdiv(num_features, block)
    _coalitions_kernel[(num_rows * n_blocks,)](rank, perm_index, prefix_size, out, num_features, n_blocks,
                                               BLOCK=block)
    return out


def shapley_accumulate_forward(outputs, rank, sums, sumsq):
    """outputs: contiguous [P, F + 1, Tn]; rank: int32 [P, F]; sums, sumsq (or None): contiguous
    [F, Tn] of one floating dtype, updated in place."""
    num_perms, num_features = rank.shape
    tn = sums.shape[1]
    block_t = min(max(triton.next_power_of_2(tn), 2), 128)
    block_f = max(256 // block_t, 2)
    n_t_blocks = triton.cdiv(tn, block_t)
    grid = (triton.cdiv(num_features, block_f) * n_t_blocks,)
    # Marginals in float64 if either side is float64, else float32 (as the C++ kernel).
    compute = tl.float64 if torch.float64 in (outputs.dtype, sums.dtype) else tl.float32
    _accumulate_kernel[grid](outputs, rank, sums, sums if sumsq is None else sumsq, num_perms, num_features, tn,
                             (num_features + 1) * tn, n_t_blocks, HAS_SUMSQ=sumsq is not None,
                             COMPUTE=compute, BLOCK_F=block_f, BLOCK_T=block_t)
