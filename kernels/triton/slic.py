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


@triton.jit
def _slic_assign_kernel(feat_ptr, mask_ptr, centers_ptr, win_ptr, best_ptr, best_k_ptr,
                        n_channels, depth, height, width, sz, sy, sx, weight,
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
                    tl.atomic_min(best_ptr + idx, bits, mask=valid)
                else:
                    best = tl.load(best_ptr + idx, mask=valid, other=0)
                    kk = tl.full([BLOCK_Y, BLOCK_X], 0, tl.int32) + k
                    tl.atomic_min(best_k_ptr + idx, kk, mask=valid & (bits == best))


@triton.jit
def _slic_update_kernel(feat_ptr, labels_ptr, sums_ptr, counts_ptr, n_channels, height, width, n_vox,
                        scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = offs < n_vox
    lab = tl.load(labels_ptr + offs, mask=inside, other=-1)
    valid = inside & (lab >= 0)
    k = tl.where(valid, lab, 0).to(tl.int64)
    nf = 3 + n_channels
    one = tl.full([BLOCK], 1, tl.int64)
    tl.atomic_add(counts_ptr + k, one, mask=valid)
    tl.atomic_add(sums_ptr + k * nf, offs // (height * width), mask=valid)
    tl.atomic_add(sums_ptr + k * nf + 1, (offs // width) % height, mask=valid)
    tl.atomic_add(sums_ptr + k * nf + 2, offs % width, mask=valid)
    for c in range(n_channels):
        v = tl.load(feat_ptr + c * n_vox + offs, mask=valid, other=0).to(tl.float64)
        q = tl.floor(v * scale + 0.5).to(tl.int64)
        tl.atomic_add(sums_ptr + k * nf + 3 + c, q, mask=valid)


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
    sz, sy, sx = problem.spacing
    dtype = feats.dtype
    # Scalars rounded to the features' dtype first, as the reference does.
    sz, sy, sx, weight = (float(torch.tensor(v, dtype=torch.float64).to(dtype)) for v in
                          (sz, sy, sx, problem.spatial_weight))
    for it in range(n_iter):
        win = _windows(centers, problem.grid_steps, (depth, height, width))
        best = torch.full((n_vox,), bits_max, dtype=bits_dtype, device=device)
        best_k = torch.full((n_vox,), n_centers, dtype=torch.int32, device=device)
        grid = (n_centers, win_z)
        for pass_ in (1, 2):
            _slic_assign_kernel[grid](feats, mask, centers, win, best, best_k, n_channels, depth, height, width,
                                      sz, sy, sx, weight, PASS=pass_, HAS_MASK=has_mask,
                                      IGNORE_COLOR=bool(ignore_color or n_channels == 0),
                                      BLOCK_Y=16, BLOCK_X=64, enable_fp_fusion=False)
        reached = best_k < n_centers
        if not bool(reached.any()):
            break
        new_labels = torch.where(reached, best_k, labels)
        if it > 0 and torch.equal(new_labels, labels):
            break  # converged: later iterations would repeat this one (see slic_iterate_reference)
        labels = new_labels
        sums = torch.zeros((n_centers, nf), dtype=torch.int64, device=device)
        counts = torch.zeros((n_centers,), dtype=torch.int64, device=device)
        _slic_update_kernel[(triton.cdiv(n_vox, 1024),)](feats, labels, sums, counts, n_channels, height, width,
                                                         n_vox, problem.fixed_scale, BLOCK=1024)
        means = sums.to(torch.float64)
        means[:, 3:] /= problem.fixed_scale
        centers = means / counts.to(torch.float64)[:, None]
    return labels.reshape(depth, height, width), centers
