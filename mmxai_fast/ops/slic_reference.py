"""SLIC reference (plain PyTorch): the oracle every backend of :func:`mmxai_fast.ops.slic` is
compared with, and its fallback. The algorithm and the deliberate differences from scikit-image are
described in ``ops/slic.py``.

Naming chain: ``slic_iterate_reference`` (assignment + centre update), ``kmeans_seeds_reference``
(maskSLIC seeding), ``connected_pieces_reference`` and ``merge_small_pieces`` (connectivity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Tuple

import torch


@dataclass(frozen=True)
class SlicProblem:
    """One modality's prepared SLIC problem, shared by every backend.

    Attributes:
        features: ``(C, D, H, W)`` rescaled intensities divided by ``compactness``, contiguous,
            float32 or float64 (the dtype the distances are computed in).
        mask: ``(D, H, W)`` bool foreground, or None (everything).
        centers: ``(K, 3 + C)`` float64 seeds: ``(z, y, x, I_1..I_C)``.
        grid_steps: window half-size / 2 per axis (scikit-image's ``regular_grid`` steps).
        spatial_weight: ``1 / S^2`` with ``S`` the largest seed spacing.
        spacing: voxel spacing ``(sz, sy, sx)``.
        fixed_scale: the centre sums' fixed-point scale (a power of two).
    """

    features: torch.Tensor
    mask: Optional[torch.Tensor]
    centers: torch.Tensor
    grid_steps: Tuple[int, int, int]
    spatial_weight: float
    spacing: Tuple[float, float, float]
    fixed_scale: float



def _windows(centers: torch.Tensor, steps, shape):
    """``[lo, hi)`` window of each centre along each axis, as scikit-image computes it."""
    bounds = []
    for axis in range(3):
        c = centers[:, axis]
        lo = torch.clamp(c - 2 * steps[axis], min=0).floor()
        hi = torch.clamp(c + 2 * steps[axis] + 1, max=shape[axis]).floor()
        bounds.append((lo, hi))
    return bounds


def _assign_reference(problem: SlicProblem, centers: torch.Tensor, labels: torch.Tensor,
                      ignore_color: bool) -> int:
    """One assignment step in place on ``labels`` (``(N,)`` int64, -1 unassigned).

    Returns the number of voxels that had a centre in reach (0 stops the iterations).
    """
    feats = problem.features
    dtype = feats.dtype
    n_channels, depth, height, width = feats.shape
    n = depth * height * width
    flat = feats.reshape(n_channels, n)
    idx = torch.arange(n)
    coords = [(idx // (height * width)), (idx // width) % height, idx % width]
    fg = problem.mask.reshape(n) if problem.mask is not None else torch.ones(n, dtype=torch.bool)
    lows_highs = _windows(centers, problem.grid_steps, (depth, height, width))
    alive = ~torch.isnan(centers[:, 0])
    weight = torch.tensor(problem.spatial_weight, dtype=torch.float64).to(dtype)
    spacing = [torch.tensor(s, dtype=torch.float64).to(dtype) for s in problem.spacing]
    best = torch.full((n,), math.inf, dtype=dtype)
    best_k = torch.full((n,), -1, dtype=torch.int64)
    chunk = max(1, 2_000_000 // max(n, 1))
    for k0 in range(0, centers.shape[0], chunk):
        ks = slice(k0, min(k0 + chunk, centers.shape[0]))
        inside = alive[ks, None] & fg[None, :]
        spatial = None
        for axis in range(3):
            lo, hi = lows_highs[axis]
            pos = coords[axis][None, :].to(torch.float64)
            inside &= (pos >= lo[ks, None]) & (pos < hi[ks, None])
            delta = spacing[axis] * (centers[ks, axis].to(dtype)[:, None] - coords[axis].to(dtype)[None, :])
            sq = delta * delta
            spatial = sq if spatial is None else spatial + sq
        dist = spatial * weight
        if not ignore_color:
            color = None
            for c in range(n_channels):
                t = flat[c][None, :] - centers[ks, 3 + c].to(dtype)[:, None]
                color = t * t if color is None else color + t * t
            if color is not None:
                dist = dist + color
        dist = torch.where(inside, dist, torch.full_like(dist, math.inf))
        chunk_best, chunk_arg = dist.min(dim=0)  # first minimum: the lowest centre index
        better = chunk_best < best
        best = torch.where(better, chunk_best, best)
        best_k = torch.where(better, chunk_arg + k0, best_k)
    reached = best_k >= 0
    labels[reached] = best_k[reached]
    return int(reached.sum())


def _quantize(values: torch.Tensor, scale: float) -> torch.Tensor:
    """Fixed-point int64 of ``values * scale``: floor(v * scale + 0.5) in float64."""
    return torch.floor(values.to(torch.float64) * scale + 0.5).to(torch.int64)


def _update_reference(problem: SlicProblem, labels: torch.Tensor, n_centers: int) -> torch.Tensor:
    """New ``(K, 3 + C)`` centres: mean position and intensity of each centre's voxels (NaN if none)."""
    feats = problem.features
    n_channels, depth, height, width = feats.shape
    n = depth * height * width
    idx = torch.arange(n)
    valid = labels >= 0
    k = labels[valid]
    sums = torch.zeros((n_centers, 3 + n_channels), dtype=torch.int64)
    coords = torch.stack([idx // (height * width), (idx // width) % height, idx % width], dim=1)
    sums[:, :3].index_add_(0, k, coords[valid])
    if n_channels:
        sums[:, 3:].index_add_(0, k, _quantize(feats.reshape(n_channels, n)[:, valid].T, problem.fixed_scale))
    counts = torch.bincount(k, minlength=n_centers).to(torch.float64)
    means = sums.to(torch.float64)
    means[:, 3:] /= problem.fixed_scale
    return means / counts[:, None]  # 0 / 0 = NaN marks a dead centre, as in scikit-image


def slic_iterate_reference(problem: SlicProblem, centers: torch.Tensor, n_iter: int,
                           ignore_color: bool) -> Tuple[torch.Tensor, torch.Tensor]:
    """``n_iter`` SLIC iterations. Returns ``(labels (D, H, W) int32 with -1 unassigned, centres)``."""
    _, depth, height, width = problem.features.shape
    labels = torch.full((depth * height * width,), -1, dtype=torch.int64)
    centers = centers.clone()
    for it in range(n_iter):
        previous = labels.clone()
        if _assign_reference(problem, centers, labels, ignore_color) == 0:
            break
        # Unchanged labels give the same centres again (exact fixed-point sums), so every later
        # iteration would repeat this one: stopping here changes nothing but the time.
        if it > 0 and torch.equal(previous, labels):
            break
        centers = _update_reference(problem, labels, centers.shape[0])
    return labels.to(torch.int32).reshape(depth, height, width), centers


def kmeans_seeds_reference(points: torch.Tensor, centers: torch.Tensor, n_iter: int) -> torch.Tensor:
    """Lloyd's k-means of ``(P, 3)`` float64 points from ``(K, 3)`` seeds (scipy ``kmeans2``:
    exact nearest centre, ties to the lower index, an empty cluster keeps its position)."""
    centers = centers.clone()
    for _ in range(n_iter):
        nearest = torch.empty(points.shape[0], dtype=torch.int64, device=points.device)
        chunk = max(1, 4_000_000 // max(centers.shape[0], 1))
        for p0 in range(0, points.shape[0], chunk):
            p = points[p0:p0 + chunk]
            d = None
            for axis in range(3):
                t = p[:, axis, None] - centers[None, :, axis]
                d = t * t if d is None else d + t * t
            nearest[p0:p0 + chunk] = d.argmin(dim=1)
        sums = torch.zeros_like(centers).index_add_(0, nearest, points)
        counts = torch.bincount(nearest, minlength=centers.shape[0])
        has = counts > 0
        centers[has] = sums[has] / counts[has, None].to(torch.float64)
    return centers


def connected_pieces_reference(labels: torch.Tensor) -> torch.Tensor:
    """Root (smallest flat index) of each voxel's 6-connected equal-label piece; -1 where unlabeled."""
    depth, height, width = labels.shape
    n = labels.numel()
    flat = labels.reshape(n).long()
    root = torch.arange(n, device=labels.device)
    valid = flat >= 0
    idx = torch.arange(n, device=labels.device)
    pairs = []
    for stride, size, axis_len in ((1, width, width), (width, height, height), (height * width, depth, depth)):
        pos = (idx // stride) % axis_len
        a = idx[(pos < axis_len - 1) & valid]
        b = a + stride
        same = valid[b] & (flat[a] == flat[b])
        pairs.append((a[same], b[same]))
    while True:
        before = root.clone()
        for a, b in pairs:  # min-label propagation with pointer jumping
            m = torch.minimum(root[a], root[b])
            root.scatter_reduce_(0, a, m, "amin")
            root.scatter_reduce_(0, b, m, "amin")
        root = root[root]
        if torch.equal(root, before):
            break
    return torch.where(valid, root, torch.full_like(root, -1)).reshape(labels.shape)


def _piece_neighbours(roots: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Pairs ``(p, q)`` of roots of 6-adjacent labeled voxels in different pieces (both orders)."""
    depth, height, width = roots.shape
    flat = roots.reshape(-1)
    n = flat.numel()
    idx = torch.arange(n, device=flat.device)
    firsts, seconds = [], []
    for stride, axis_len in ((1, width), (width, height), (height * width, depth)):
        a = idx[((idx // stride) % axis_len) < axis_len - 1]
        ra, rb = flat[a], flat[a + stride]
        keep = (ra >= 0) & (rb >= 0) & (ra != rb)
        firsts += [ra[keep], rb[keep]]
        seconds += [rb[keep], ra[keep]]
    return torch.cat(firsts), torch.cat(seconds)


def merge_small_pieces(roots: torch.Tensor, min_size: int) -> torch.Tensor:
    """Merge pieces smaller than ``min_size`` into a neighbour and number segments from 0.

    A small piece joins its adjacent piece with the smallest root if that root is smaller than its
    own (an earlier piece, as scikit-image's raster-order pass), else its adjacent large piece
    with the smallest root, else it stays. Chains of small pieces resolve to their final piece;
    segments are numbered in raster order of their first voxel.

    Args:
        roots: ``(D, H, W)`` int64 piece roots (smallest flat index of the piece), -1 unlabeled;
            from :func:`connected_pieces_reference` or a kernel.
        min_size: pieces with fewer voxels are merged.

    Returns:
        ``(D, H, W)`` int64 segment ids ``0..n-1``, -1 unlabeled.
    """
    n = roots.numel()
    device = roots.device
    root = roots.reshape(n).long()
    valid = root >= 0
    size = torch.bincount(root[valid], minlength=n)
    large = size >= min_size
    p, q = _piece_neighbours(roots.long())
    big = torch.full((n,), n, dtype=torch.int64, device=device)
    nearest = big.clone().scatter_reduce_(0, p, q, "amin")  # smallest adjacent root
    large_q = large[q]
    nearest_large = big.clone().scatter_reduce_(0, p[large_q], q[large_q], "amin")
    piece = torch.nonzero(size > 0).flatten()  # piece roots, ascending = raster order
    small = ~large[piece]
    earlier = nearest[piece] < piece
    target = torch.where(small & earlier, nearest[piece],
                         torch.where(small & (nearest_large[piece] < n), nearest_large[piece], piece))
    parent = torch.arange(n, device=device)
    parent[piece] = target
    while True:  # earlier targets decrease and large targets stay: the chains end
        nxt = parent[parent]
        if torch.equal(nxt, parent):
            break
        parent = nxt
    survivors = piece[target == piece]
    rank = torch.full((n,), -1, dtype=torch.int64, device=device)
    rank[survivors] = torch.arange(survivors.numel(), device=device)
    out = torch.full((n,), -1, dtype=torch.int64, device=device)
    out[valid] = rank[parent[root[valid]]]
    return out.reshape(roots.shape)


def _connectivity_reference(labels: torch.Tensor, min_size: int) -> torch.Tensor:
    return merge_small_pieces(connected_pieces_reference(labels), min_size)
