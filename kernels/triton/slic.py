"""Triton kernels for SLIC: assignment and centre update (mmxai_fast/ops/slic.py has the algorithm).

Assignment scatters from the centres, one program per (centre, window slice), as scikit-image's
loop does, and resolves races with integer atomics so the result is exact and order-free:
pass 1 takes the minimum distance per voxel (non-negative floats order like their bit patterns),
pass 2 the lowest centre index among the centres at that distance. Distances are computed in the
features' dtype in the reference's operation order, without FMA contraction
(``enable_fp_fusion=False``), so the labels equal the reference's exactly.

Centre update: per-voxel atomics into int64 fixed-point sums (exact, so order-free).
"""
import torch
import triton
import triton.language as tl

from mmxai_fast._kernels import device_guard


@triton.jit
def _slic_assign_kernel(feat_ptr, mask_ptr, centers_ptr, win_ptr, best_ptr, best_k_ptr,
                        n_channels, depth, height, width, scalars_ptr,
                        PASS: tl.constexpr, HAS_MASK: tl.constexpr, IGNORE_COLOR: tl.constexpr,
                        BLOCK_Y: tl.constexpr, BLOCK_X: tl.constexpr):
    # One program per (centre, slice of its window); (y, x) tiles of the window inside.
    k = tl.program_id(0)
    zlo = tl.load(win_ptr + k * 6)
    zhi = tl.load(win_ptr + k * 6 + 1)
    ylo = tl.load(win_ptr + k * 6 + 2)
    yhi = tl.load(win_ptr + k * 6 + 3)
    xlo = tl.load(win_ptr + k * 6 + 4)
    xhi = tl.load(win_ptr + k * 6 + 5)
    z = zlo + tl.program_id(1)
    if z < zhi:
        dtype = feat_ptr.dtype.element_ty
        nf = 3 + n_channels
        n_vox = depth * height * width
        # Spacing and weight come from a float64 tensor: Python float arguments are float32 once
        # compiled (the interpreter keeps float64), which would change float64 labels.
        sz = tl.load(scalars_ptr + 0).to(dtype)
        sy = tl.load(scalars_ptr + 1).to(dtype)
        sx = tl.load(scalars_ptr + 2).to(dtype)
        weight = tl.load(scalars_ptr + 3).to(dtype)
        cz = tl.load(centers_ptr + k * nf).to(dtype)
        cy = tl.load(centers_ptr + k * nf + 1).to(dtype)
        cx = tl.load(centers_ptr + k * nf + 2).to(dtype)
        dzv = sz * (cz - z.to(dtype))
        dz = dzv * dzv
        for y0 in range(ylo, yhi, BLOCK_Y):
            y = y0 + tl.arange(0, BLOCK_Y)[:, None]
            dyv = sy * (cy - y.to(dtype))
            dzy = dz + dyv * dyv
            for x0 in range(xlo, xhi, BLOCK_X):
                x = x0 + tl.arange(0, BLOCK_X)[None, :]
                valid = (y < yhi) & (x < xhi)
                idx = (z.to(tl.int64) * height + y) * width + x
                if HAS_MASK:
                    valid = valid & (tl.load(mask_ptr + idx, mask=valid, other=0) != 0)
                dxv = sx * (cx - x.to(dtype))
                dist = (dzy + dxv * dxv) * weight
                if not IGNORE_COLOR:
                    ck0 = tl.load(centers_ptr + k * nf + 3).to(dtype)
                    t0 = tl.load(feat_ptr + idx, mask=valid, other=0).to(dtype) - ck0
                    color = t0 * t0
                    for c in range(1, n_channels):
                        ck = tl.load(centers_ptr + k * nf + 3 + c).to(dtype)
                        t = tl.load(feat_ptr + c * n_vox + idx, mask=valid, other=0).to(dtype) - ck
                        color = color + t * t
                    dist = dist + color
                if dtype == tl.float64:
                    bits = dist.to(tl.int64, bitcast=True)
                else:
                    bits = dist.to(tl.int32, bitcast=True)
                if PASS == 1:
                    tl.atomic_min(best_ptr + idx, bits, mask=valid, sem="relaxed")
                else:
                    best = tl.load(best_ptr + idx, mask=valid, other=0)
                    kk = tl.full([BLOCK_Y, BLOCK_X], 0, tl.int32) + k
                    tl.atomic_min(best_k_ptr + idx, kk, mask=valid & (bits == best), sem="relaxed")


@triton.jit
def _slic_update_kernel(feat_ptr, labels_ptr, sums_ptr, counts_ptr, n_channels, height, width, n_vox,
                        scale_ptr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_vox
    lab = tl.load(labels_ptr + offs, mask=inside, other=-1)
    valid = inside & (lab >= 0)
    k = tl.where(valid, lab, 0).to(tl.int64)
    nf = 3 + n_channels
    scale = tl.load(scale_ptr)  # float64, as the reference's fixed-point scale
    one = tl.full([BLOCK], 1, tl.int64)
    tl.atomic_add(counts_ptr + k, one, mask=valid, sem="relaxed")
    tl.atomic_add(sums_ptr + k * nf, offs // (height * width), mask=valid, sem="relaxed")
    tl.atomic_add(sums_ptr + k * nf + 1, (offs // width) % height, mask=valid, sem="relaxed")
    tl.atomic_add(sums_ptr + k * nf + 2, offs % width, mask=valid, sem="relaxed")
    for c in range(n_channels):
        v = tl.load(feat_ptr + c * n_vox + offs, mask=valid, other=0).to(tl.float64)
        q = tl.floor(v * scale + 0.5).to(tl.int64)
        tl.atomic_add(sums_ptr + k * nf + 3 + c, q, mask=valid, sem="relaxed")


def _windows(centers, steps, shape):
    """``(K, 6)`` int64 ``[zlo, zhi, ylo, yhi, xlo, xhi]``, empty for dead (NaN) centres."""
    cols = []
    for axis in range(3):
        c = centers[:, axis]
        lo = torch.clamp(c - 2 * steps[axis], min=0).floor()
        hi = torch.clamp(c + 2 * steps[axis] + 1, max=shape[axis]).floor()
        dead = torch.isnan(c)
        cols += [torch.where(dead, 0.0, lo), torch.where(dead, 0.0, hi)]
    return torch.stack(cols, dim=1).to(torch.int64).contiguous()


def slic_iterate_forward(problem, centers, n_iter, ignore_color):
    """``n_iter`` SLIC iterations on ``problem`` (a ``SlicProblem``). Returns ``(labels (D, H, W)
    int32 with -1 unassigned, centres (K, 3 + C) float64)``, equal to ``slic_iterate_reference``."""
    feats = problem.features
    device = feats.device
    n_channels, depth, height, width = feats.shape
    n_vox = depth * height * width
    n_centers = centers.shape[0]
    nf = 3 + n_channels
    centers = centers.to(device=device, dtype=torch.float64).contiguous().clone()
    labels = torch.full((n_vox,), -1, dtype=torch.int32, device=device)
    has_mask = problem.mask is not None
    mask = problem.mask.reshape(-1).to(torch.uint8).contiguous() if has_mask else labels
    bits_dtype = torch.int64 if feats.dtype == torch.float64 else torch.int32
    bits_max = torch.iinfo(bits_dtype).max
    win_z = min(4 * problem.grid_steps[0] + 2, depth)
    # Rounded to the features' dtype first, as the reference does, then kept in float64.
    scalars = torch.tensor([float(torch.tensor(v, dtype=torch.float64).to(feats.dtype)) for v in
                            (*problem.spacing, problem.spatial_weight)] + [problem.fixed_scale],
                           dtype=torch.float64).to(device)
    ignore = bool(ignore_color or n_channels == 0)
    with device_guard(feats):
        for it in range(n_iter):
            win = _windows(centers, problem.grid_steps, (depth, height, width))
            best = torch.full((n_vox,), bits_max, dtype=bits_dtype, device=device)
            best_k = torch.full((n_vox,), n_centers, dtype=torch.int32, device=device)
            slic_assign_launch(feats, mask, centers, win, best, best_k, scalars, win_z, has_mask, ignore)
            reached = best_k < n_centers
            if not bool(reached.any()):  # once per iteration of a per-attribution-call op
                break
            new_labels = torch.where(reached, best_k, labels)
            if it > 0 and torch.equal(new_labels, labels):
                break  # converged: later iterations would repeat this one (see slic_iterate_reference)
            labels = new_labels
            sums = torch.zeros((n_centers, nf), dtype=torch.int64, device=device)
            counts = torch.zeros((n_centers,), dtype=torch.int64, device=device)
            slic_update_launch(feats, labels, sums, counts, scalars[4:])
            means = sums.to(torch.float64)
            means[:, 3:] /= problem.fixed_scale
            centers = means / counts.to(torch.float64)[:, None]
    return labels.reshape(depth, height, width), centers


def slic_assign_launch(feats, mask, centers, win, best, best_k, scalars, win_z, has_mask, ignore_color):
    """Both assignment passes. feats: (C, D, H, W); centers: float64 (K, 3 + C); win: int64
    (K, 6); best, best_k: (D*H*W,) distance bits and centre; scalars: float64 [sz, sy, sx, w, ...]."""
    n_channels, depth, height, width = feats.shape
    for pass_ in (1, 2):
        _slic_assign_kernel[(centers.shape[0], win_z)](
            feats, mask, centers, win, best, best_k, n_channels, depth, height, width, scalars,
            PASS=pass_, HAS_MASK=has_mask, IGNORE_COLOR=ignore_color, BLOCK_Y=16, BLOCK_X=64,
            enable_fp_fusion=False)


def slic_update_launch(feats, labels, sums, counts, scale):
    """Fixed-point centre sums: feats (C, D, H, W); labels int32 (D*H*W,); scale float64 [1]."""
    n_channels, depth, height, width = feats.shape
    n_vox = depth * height * width
    _slic_update_kernel[(triton.cdiv(n_vox, 1024),)](feats, labels, sums, counts, n_channels, height, width,
                                                     n_vox, scale, BLOCK=1024)
