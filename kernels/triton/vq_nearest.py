"""Triton kernels for ``vq_nearest``: nearest-codeword lookup.

``_vq_nearest_kernel``: one program per BLOCK_N rows of z. It loops over the codebook in BLOCK_K
tiles, computes the tile's scores ``||e_k||^2 - 2 z . e_k`` with ``tl.dot`` on tensor cores
(fp16/bf16 natively, float32 as ``tf32x3``, float64 in IEEE) over BLOCK_D slices of the features,
and keeps a running minimum per row; no N x K buffer exists.
Within a tile the lowest index among equal minima is taken, and a later tile replaces the running
minimum only when strictly smaller, so ties go to the lowest index.

Exact duplicate codewords must resolve to the lowest index, which needs bit-identical scores for
identical codewords. A GPU's IEEE ``tl.dot`` sums every output element in the same order, but that is
not part of ``tl.dot``'s contract (the interpreter's numpy/BLAS matmul rounds identical columns
differently), so ``_first_duplicate_kernel`` maps each codeword to the lowest index holding the same
vector (O(K^2 D) compares, negligible next to the O(N K D) search) and the winner is mapped through
it.
"""
import os

import torch
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard


@triton.jit
def _float32_to_bfloat16_rtne(x):
    """Round to nearest even, as a GPU's conversion does (the interpreter truncates instead)."""
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    rounded = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x == x, rounded, x.to(tl.bfloat16))  # NaN stays NaN


@triton.jit
def _first_duplicate_kernel(e_ptr, first_ptr, K, D, stride_ek, stride_ed,
                            BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """first[k] = the lowest j with e_j == e_k (element-wise equal values)."""
    pid = tl.program_id(0)
    ks = pid.to(tl.int64) * BLOCK_K + tl.arange(0, BLOCK_K)
    k_ok = ks < K
    cols = tl.arange(0, BLOCK_D)
    first = ks
    for j0 in range(0, (pid + 1) * BLOCK_K, BLOCK_J):  # only j < k can be a lower duplicate
        js = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        same = (js[None, :] < ks[:, None]) & k_ok[:, None]
        for d0 in range(0, D, BLOCK_D):
            d = d0 + cols
            d_ok = d < D
            ek = tl.load(e_ptr + ks[:, None] * stride_ek + d[None, :] * stride_ed,
                         mask=k_ok[:, None] & d_ok[None, :], other=0)
            ej = tl.load(e_ptr + js[:, None] * stride_ek + d[None, :] * stride_ed,
                         mask=(js[:, None] < K) & d_ok[None, :], other=0)
            equal = (ek[:, None, :] == ej[None, :, :]) | (d[None, None, :] >= D)
            same = same & (tl.min(equal.to(tl.int32), axis=2) == 1)
        first = tl.minimum(first, tl.min(tl.where(same, js[None, :], K), axis=1))
    tl.store(first_ptr + ks, first, mask=k_ok)


@triton.jit
def _operand(x, WIDEN: tl.constexpr):
    # The interpreter's tl.dot multiplies bfloat16 tiles as raw integer bits; widening to float32
    # is exact (8-bit mantissas) and only used there. Compiled code keeps native bf16 operands.
    if WIDEN:
        x = x.to(tl.float32)
    return x


@triton.jit
def _vq_nearest_kernel(z_ptr, e_ptr, first_ptr, idx_ptr, dist_ptr, N, K, D,
                       stride_zn, stride_zd, stride_ek, stride_ed,
                       BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_D: tl.constexpr,
                       COMPUTE_F64: tl.constexpr, PRECISION: tl.constexpr, WIDEN: tl.constexpr):
    compute = tl.float64 if COMPUTE_F64 else tl.float32
    pid = tl.program_id(0)
    rows = pid.to(tl.int64) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < N
    cols = tl.arange(0, BLOCK_D)

    # z's tile stays in registers for the whole codebook when D fits one slice (D <= BLOCK_D).
    z_first = tl.load(z_ptr + rows[:, None] * stride_zn + cols[None, :] * stride_zd,
                      mask=row_ok[:, None] & (cols[None, :] < D), other=0)
    z_norm = tl.sum(z_first.to(compute) * z_first.to(compute), axis=1)
    for d0 in range(BLOCK_D, D, BLOCK_D):
        d = d0 + cols
        zt = tl.load(z_ptr + rows[:, None] * stride_zn + d[None, :] * stride_zd,
                     mask=row_ok[:, None] & (d[None, :] < D), other=0).to(compute)
        z_norm += tl.sum(zt * zt, axis=1)

    best = tl.full([BLOCK_N], float("inf"), dtype=compute)
    best_idx = tl.zeros([BLOCK_N], dtype=tl.int64)
    for k0 in range(0, K, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K).to(tl.int64)
        k_ok = ks < K
        et = tl.load(e_ptr + ks[:, None] * stride_ek + cols[None, :] * stride_ed,
                     mask=k_ok[:, None] & (cols[None, :] < D), other=0)
        # Tensor cores: fp16/bf16 operands natively, float32 as tf32x3 (three TF32 products of
        # the hi/lo split: about float32 accuracy), float64 in IEEE; accumulation in ``compute``.
        dot = tl.dot(_operand(z_first, WIDEN), tl.trans(_operand(et, WIDEN)), out_dtype=compute,
                     input_precision=PRECISION)
        e_norm = tl.sum(et.to(compute) * et.to(compute), axis=1)
        for d0 in range(BLOCK_D, D, BLOCK_D):
            d = d0 + cols
            d_ok = d[None, :] < D
            zt = tl.load(z_ptr + rows[:, None] * stride_zn + d[None, :] * stride_zd,
                         mask=row_ok[:, None] & d_ok, other=0)
            ed = tl.load(e_ptr + ks[:, None] * stride_ek + d[None, :] * stride_ed,
                         mask=k_ok[:, None] & d_ok, other=0)
            dot = tl.dot(_operand(zt, WIDEN), tl.trans(_operand(ed, WIDEN)), dot, out_dtype=compute,
                         input_precision=PRECISION)
            e_norm += tl.sum(ed.to(compute) * ed.to(compute), axis=1)
        scores = e_norm[None, :] - 2 * dot
        scores = tl.where(k_ok[None, :], scores, float("inf"))
        tile_min = tl.min(scores, axis=1)
        candidates = tl.where(scores == tile_min[:, None], ks[None, :], K)
        tile_idx = tl.min(candidates, axis=1)
        better = tile_min < best
        best = tl.where(better, tile_min, best)
        best_idx = tl.where(better, tile_idx, best_idx)

    best_idx = tl.load(first_ptr + best_idx, mask=row_ok, other=0)
    dist = tl.maximum(z_norm + best, 0.0)
    tl.store(idx_ptr + rows, best_idx, mask=row_ok)
    if dist_ptr.dtype.element_ty == tl.bfloat16:
        dist = _float32_to_bfloat16_rtne(dist)
    tl.store(dist_ptr + rows, dist.to(dist_ptr.dtype.element_ty), mask=row_ok)


def vq_nearest_config(dtype, d):
    """(BLOCK_N, BLOCK_K, BLOCK_D, num_warps, input_precision) for features of ``dtype``, ``D = d``."""
    # tl.dot needs every tile dim >= 16; D is sliced into BLOCK_D columns, masked past D.
    if dtype == torch.float64:
        return 32, 32, min(max(16, triton.next_power_of_2(d)), 32), 8, "ieee"
    block_d = min(max(16, triton.next_power_of_2(d)), 128)
    if dtype == torch.float32:  # tf32x3 keeps hi/lo splits of both tiles: 128 x 32 tiles, 8 warps: no spills
        return 128, 32, min(block_d, 64), 8, "tf32x3"
    return 128, 64, block_d, 8, "tf32"  # fp16/bf16: native tensor-core operands


def vq_nearest_forward(z, codebook, indices, dist, first=None):
    """z: [N, D], codebook: [K, D] (same floating dtype, any strides); indices int64 [N] and dist
    [N] in z's dtype are written. ``first`` (int64 [K], from ``vq_first_duplicates``) may be
    passed when the codebook is fixed over many calls."""
    n, d = z.shape
    k = codebook.shape[0]
    block_n, block_k, block_d, warps, precision = vq_nearest_config(z.dtype, d)
    with device_guard(z):
        if first is None:
            first = vq_first_duplicates(codebook)
        _vq_nearest_kernel[(triton.cdiv(n, block_n),)](
            z, codebook, first, indices, dist, n, k, d, z.stride(0), z.stride(1),
            codebook.stride(0), codebook.stride(1), BLOCK_N=block_n, BLOCK_K=block_k, BLOCK_D=block_d,
            COMPUTE_F64=z.dtype == torch.float64, PRECISION=precision,
            WIDEN=z.dtype == torch.bfloat16 and os.environ.get("TRITON_INTERPRET") == "1", num_warps=warps)
    return indices, dist


def vq_first_duplicates(codebook):
    """int64 [K]: the lowest index holding the same vector as each codeword."""
    k, d = codebook.shape
    first = torch.empty(k, dtype=torch.int64, device=codebook.device)
    dup_block = 32
    with device_guard(codebook):
        _first_duplicate_kernel[(triton.cdiv(k, dup_block),)](
            codebook, first, k, d, codebook.stride(0), codebook.stride(1),
            BLOCK_K=dup_block, BLOCK_J=16, BLOCK_D=16)
    return first
