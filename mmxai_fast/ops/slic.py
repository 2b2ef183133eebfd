"""SLIC superpixels / supervoxels in 2D and 3D: ``slic`` (Achanta et al., TPAMI 2012; maskSLIC,
Irving 2016), with the semantics of :func:`skimage.segmentation.slic` for the arguments it supports.

Every perturbation attribution except Occlusion is fed a superpixel feature mask computed on the
foreground only (background.md section 1), one mask per modality with modality-specific ids.

Algorithm (per modality, as scikit-image): the intensities are rescaled to [0, 1] over the
foreground and divided by ``compactness``; seeds are placed on a regular grid, or with a ``mask``
inside the mask (k-means of a random subset of the mask's coordinates, then 10 spatial-only SLIC
iterations); then ``max_num_iter`` k-means iterations, each voxel compared only with the centres
whose window of +-2 grid steps contains it::

    D(v, k) = ((sz (cz - z))^2 + (sy (cy - y))^2 + (sx (cx - x))^2) / S^2 + sum_c (I_c(v) - I_c(k))^2

(ties go to the lower centre index), and the centres moved to their voxels' means. Finally small
disconnected pieces are merged into a neighbour (``enforce_connectivity``).

Where we differ from scikit-image, deliberately and identically in every backend:

- Centre sums are accumulated in fixed point (int64), so every backend gets bit-identical centres
  whatever the reduction order; distances are computed in the input's float dtype (float32
  unless the image is float64).
- Mask seeding uses the same random subset (``RandomState(123)``) and 5 Lloyd iterations as
  scikit-image's ``kmeans2``; nearest centres are exact.
- Connectivity: pieces are the 6-connected components of equal label; a piece smaller than
  ``min_size_factor * segment size`` joins an adjacent earlier piece (or, lacking one, an adjacent
  large piece; see :func:`merge_small_pieces`) instead of scikit-image's order-dependent pick;
  pieces are never split (scikit-image splits pieces larger than ``max_size_factor`` segments);
  labels are numbered in raster order of each segment's first voxel.

Naming chain: ``slic_reference`` (plain PyTorch/NumPy oracle and fallback), ``_slic_cpu``
(C++ in ``csrc/cpu/slic_cpu.cpp``), ``_slic_triton`` (assignment and centre update in
``kernels/triton/slic.py``; connectivity in CUDA C++ ``kernels/cuda/slic_connectivity.cu`` on
GPUs, the reference's on CPU tensors), and the public ``slic``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from .._backends import backend_reasons, compiled_module, resolve_backend
from .._kernels import triton_module

# k-means iterations of the mask seeding, and the density of its random subset (scikit-image).
_SEED_KMEANS_ITERS = 5
_SEED_DENSE_FACTOR = 10
# The fixed-point scale of the centre sums is at most 2**40 and keeps every product below 2**52
# (exact in float64) and every sum below 2**62 (no int64 overflow).
_MAX_FIXED_SCALE_LOG2 = 40


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


# --------------------------------------------------------------------------------------------
# Reference (plain PyTorch): the oracle every backend is compared with, and the fallback.
# --------------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------------
# Compiled backends.
# --------------------------------------------------------------------------------------------

def _cpu_iterate(problem: SlicProblem, centers, n_iter, ignore_color):
    feats = problem.features
    n_channels, depth, height, width = feats.shape
    labels = torch.empty((depth, height, width), dtype=torch.int32)
    centers = centers.contiguous().clone()
    mask = problem.mask.to(torch.uint8).contiguous() if problem.mask is not None else None
    compiled_module().slic_iterate(
        feats.data_ptr(), feats.dtype == torch.float64, mask.data_ptr() if mask is not None else 0,
        n_channels, depth, height, width, centers.data_ptr(), centers.shape[0],
        list(problem.grid_steps), list(problem.spacing), problem.spatial_weight, n_iter,
        ignore_color, problem.fixed_scale, labels.data_ptr())
    return labels, centers


def _cpu_kmeans(points, centers, n_iter, shape):
    points = points.contiguous()
    centers = centers.contiguous().clone()
    compiled_module().slic_kmeans_seeds(points.data_ptr(), points.shape[0], centers.data_ptr(),
                                        centers.shape[0], n_iter, list(shape))
    return centers


def _cpu_connectivity(labels, min_size):
    labels = labels.to(torch.int32).contiguous()
    out = torch.empty(labels.shape, dtype=torch.int64)
    compiled_module().slic_connectivity(labels.data_ptr(), *labels.shape, min_size, out.data_ptr())
    return out


def _triton_iterate(problem: SlicProblem, centers, n_iter, ignore_color):
    return triton_module("slic").slic_iterate_forward(problem, centers, n_iter, ignore_color)


def _triton_connectivity(labels, min_size):
    if not backend_reasons("cuda", labels.device):  # CUDA tensors and CuPy: union-find kernels
        return merge_small_pieces(_cuda_connected_pieces(labels), min_size)
    return _connectivity_reference(labels, min_size)


def _cuda_connected_pieces(labels: torch.Tensor) -> torch.Tensor:
    """Union-find connected components on the GPU (``kernels/cuda/slic_connectivity.cu``)."""
    from .._cuda import launch

    depth, height, width = labels.shape
    n = labels.numel()
    labels = labels.to(torch.int32).contiguous()
    parent = torch.empty(n, dtype=torch.int64, device=labels.device)
    blocks = (max(1, min(65535 * 4, (n + 255) // 256)),)
    args = (labels, parent, np.int32(depth), np.int32(height), np.int32(width))
    for kernel in ("slic_init_parents", "slic_union_neighbours", "slic_flatten_parents"):
        launch("slic_connectivity", kernel, blocks, (256,), args)
    return parent.reshape(labels.shape)


_ITERATE = {"reference": slic_iterate_reference, "cpu": _cpu_iterate, "triton": _triton_iterate}
def _triton_kmeans(points, centers, n_iter, shape, device):
    # The seeding is a small dense problem: plain PyTorch on the GPU (the reference on CPU tensors).
    return kmeans_seeds_reference(points.to(device), centers.to(device), n_iter).cpu()


_KMEANS = {"reference": lambda p, c, it, shape, device: kmeans_seeds_reference(p, c, it),
           "cpu": lambda p, c, it, shape, device: _cpu_kmeans(p, c, it, shape), "triton": _triton_kmeans}
_CONNECTIVITY = {"reference": _connectivity_reference, "cpu": _cpu_connectivity,
                 "triton": _triton_connectivity}


# --------------------------------------------------------------------------------------------
# Preparation shared by every backend (scikit-image's rescaling and seeding).
# --------------------------------------------------------------------------------------------

def _regular_grid_steps(shape, n_points) -> Tuple[List[slice], Tuple[int, int, int]]:
    from skimage.util import regular_grid

    slices = regular_grid(shape, n_points)
    return slices, tuple(int(s.step) if s.step is not None else 1 for s in slices)


def _grid_seeds(shape, n_segments):
    slices, steps = _regular_grid_steps(shape, n_segments)
    grids = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centers = np.stack([g[slices].ravel() for g in grids], axis=-1).astype(np.float64)
    return centers, steps, float(max(steps))


def _mask_seeds(mask: np.ndarray, n_segments: int, kmeans):
    coord = np.array(np.nonzero(mask), dtype=np.float64).T
    rng = np.random.RandomState(123)  # scikit-image's fixed seed
    idx_full = np.arange(len(coord), dtype=int)
    idx = np.sort(rng.choice(idx_full, min(n_segments, len(coord)), replace=False))
    n_dense = int(_SEED_DENSE_FACTOR ** 3 * n_segments)
    idx_dense = np.sort(rng.choice(idx_full, n_dense, replace=False)) if len(coord) > n_dense else idx_full
    centers = kmeans(torch.from_numpy(coord[idx_dense]), torch.from_numpy(coord[idx]), _SEED_KMEANS_ITERS)
    c = centers.numpy()
    if len(c) > 1:
        d = ((c[:, None, :] - c[None, :, :]) ** 2).sum(-1)
        np.fill_diagonal(d, np.inf)
        steps = np.abs(c - c[d.argmin(-1)]).mean(0)
    else:
        steps = np.ones(3)
    _, grid_steps = _regular_grid_steps(mask.shape, len(c))
    return c, grid_steps, float(max(steps))


def _rescale(image: torch.Tensor, mask: Optional[torch.Tensor], ratio: float) -> torch.Tensor:
    values = image[:, mask] if mask is not None else image
    if values.numel() == 0:
        return image.clone()
    lo, hi = float(values.min()), float(values.max())
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("image: unmasked NaN values are not supported")
    if math.isinf(lo) or math.isinf(hi):
        raise ValueError("image: unmasked infinite values are not supported")
    out = image - torch.tensor(lo, dtype=image.dtype)
    if hi != lo:
        out = out / torch.tensor(hi - lo, dtype=image.dtype)
    return (out * torch.tensor(ratio, dtype=image.dtype)).contiguous()


def _fixed_scale(ratio: float, n: int) -> float:
    top = max(ratio, 1e-300)
    log2 = min(_MAX_FIXED_SCALE_LOG2, math.floor(math.log2(2.0 ** 62 / (top * max(n, 1)))),
               math.floor(math.log2(2.0 ** 52 / top)))
    return 2.0 ** log2


def _segment_one(image: torch.Tensor, mask: Optional[torch.Tensor], opts: "_Options", backend: str) -> torch.Tensor:
    """SLIC of one modality ``(C, D, H, W)``; returns ``(D, H, W)`` int64 ids from 0, -1 outside."""
    shape = tuple(image.shape[1:])
    if mask is not None and not bool(mask.any()):
        return torch.full(shape, -1, dtype=torch.int64, device=image.device)
    ratio = 1.0 / opts.compactness
    feats = _rescale(image, mask, ratio)
    n_fg = int(mask.sum()) if mask is not None else math.prod(shape)
    if mask is not None:
        seeds, grid_steps, step = _mask_seeds(mask.cpu().numpy(), opts.n_segments,
                                              lambda p, c, it: _KMEANS[backend](p, c, it, shape, image.device))
    else:
        seeds, grid_steps, step = _grid_seeds(shape, opts.n_segments)
    n_centers = len(seeds)
    problem = SlicProblem(features=feats, mask=mask, centers=torch.zeros(0), grid_steps=grid_steps,
                          spatial_weight=1.0 / (step * step), spacing=opts.spacing,
                          fixed_scale=_fixed_scale(ratio, n_fg))
    centers = torch.zeros((n_centers, 3 + image.shape[0]), dtype=torch.float64, device=image.device)
    centers[:, :3] = torch.from_numpy(seeds).to(image.device)
    iterate = _ITERATE[backend]
    if mask is not None:  # maskSLIC step 2: spatial-only iterations spread the seeds
        _, centers = iterate(problem, centers, opts.max_num_iter, True)
    labels, _ = iterate(problem, centers, opts.max_num_iter, False)
    if opts.enforce_connectivity:
        segment_size = n_fg / n_centers
        return _CONNECTIVITY[backend](labels, int(opts.min_size_factor * segment_size))
    return labels.to(torch.int64)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class _Options:
    n_segments: int
    compactness: float
    max_num_iter: int
    spacing: Tuple[float, float, float]
    enforce_connectivity: bool
    min_size_factor: float


def slic_reference(image, n_segments=100, compactness=10.0, max_num_iter=10, spacing=None,
                   enforce_connectivity=True, min_size_factor=0.5, start_label=1, mask=None, *,
                   channel_axis=-1, modality_axis=None):
    """Plain-PyTorch oracle of :func:`slic` (same arguments)."""
    return slic(image, n_segments, compactness, max_num_iter, spacing=spacing,
                enforce_connectivity=enforce_connectivity, min_size_factor=min_size_factor,
                start_label=start_label, mask=mask, channel_axis=channel_axis,
                modality_axis=modality_axis, backend="reference")


def _as_tensor(value, name: str) -> Tuple[torch.Tensor, bool]:
    if isinstance(value, torch.Tensor):
        return value, False
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value)), True
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def _normalize_axis(axis, ndim: int, name: str) -> int:
    if isinstance(axis, bool) or not isinstance(axis, int) or not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be an int in [{-ndim}, {ndim}) for an image with {ndim} dims, got {axis!r}")
    return axis % ndim


def _layout(image: torch.Tensor, channel_axis, modality_axis) -> Tuple[torch.Tensor, int]:
    """Move axes to ``(M, C, *spatial)``; returns the tensor and the number of spatial dims."""
    ndim = image.dim()
    mod = _normalize_axis(modality_axis, ndim, "modality_axis") if modality_axis is not None else None
    chan = _normalize_axis(channel_axis, ndim, "channel_axis") if channel_axis is not None else None
    if mod is not None and mod == chan:
        raise ValueError(f"modality_axis and channel_axis must differ, both are axis {mod}")
    spatial = [d for d in range(ndim) if d not in (mod, chan)]
    if len(spatial) not in (2, 3):
        raise ValueError(
            f"image must have 2 or 3 spatial dims besides channel_axis={channel_axis} and "
            f"modality_axis={modality_axis}, got shape {tuple(image.shape)} ({len(spatial)} spatial dims)")
    order = ([mod] if mod is not None else []) + ([chan] if chan is not None else []) + spatial
    out = image.permute(order)
    if mod is None:
        out = out.unsqueeze(0)
    if chan is None:
        out = out.unsqueeze(1)
    return out, len(spatial)


def slic(image, n_segments: int = 100, compactness: float = 10.0, max_num_iter: int = 10, sigma=0,
         spacing=None, convert2lab=None, enforce_connectivity: bool = True, min_size_factor: float = 0.5,
         max_size_factor: float = 3, slic_zero: bool = False, start_label: int = 1, mask=None, *,
         channel_axis: Optional[int] = -1, modality_axis: Optional[int] = None, backend: str = None):
    """SLIC superpixels (2D) / supervoxels (3D), scikit-image's ``slic`` as a kernel.

    Several modalities in one call: ``modality_axis`` names the axis whose entries are segmented
    independently (each with its own labels, ids of modality ``m`` following those of ``m - 1``);
    ``channel_axis`` names the axis whose entries are clustered jointly (one segmentation over all
    channels). A ``(4, 240, 240, 155)`` BraTS volume with one mask per modality is
    ``slic(volume, modality_axis=0, channel_axis=None, mask=brain)``.

    Args:
        image: ``(*S)`` (``channel_axis=None``), ``(*S, C)``, and/or with a modality axis:
            2 or 3 spatial dims ``S``. numpy array or tensor, any real dtype; computed in float64
            for float64 input, else float32.
        n_segments: approximate number of segments (per modality).
        compactness: weight of space against intensity (larger: more cubic segments).
        max_num_iter: k-means iterations.
        sigma, convert2lab, slic_zero: only scikit-image's defaults for non-RGB data
            (0, None/False, False) are supported.
        spacing: voxel spacing per spatial dim (length 2 or 3), default 1.
        enforce_connectivity: merge small disconnected pieces so every segment is connected.
        min_size_factor: pieces smaller than this fraction of the mean segment size are merged.
        max_size_factor: only 3 (the default) is accepted; large pieces are never split.
        start_label: 0 or 1; voxels outside ``mask`` get ``start_label - 1``.
        mask: bool ``S`` (shared by all modalities) or ``(M, *S)``: only True voxels are segmented.
        channel_axis: axis of jointly clustered channels, or None.
        modality_axis: axis of independently segmented modalities, or None.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        int64 labels, ``S`` or ``(M, *S)`` with a modality axis (modalities first), same kind
        (numpy / tensor) and device as ``image``.

    Raises:
        TypeError: ``image``/``mask`` of the wrong type or dtype.
        ValueError: bad shapes, axes, ``start_label``, ``spacing``, unsupported options, unmasked
            NaN or inf.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    image, was_numpy = _as_tensor(image, "image")
    if image.is_complex() or image.dtype == torch.bool:
        raise TypeError(f"image must have a real (integer or floating) dtype, got {image.dtype}")
    if image.dim() == 2 and channel_axis is not None:
        raise ValueError(f"channel_axis={channel_axis} indicates multichannel, which is not supported for a "
                         "two-dimensional image; use channel_axis=None if the image is grayscale")
    if sigma != 0:
        raise ValueError(f"sigma: only 0 (no smoothing) is supported, got {sigma!r}; smooth beforehand")
    if convert2lab:
        raise ValueError("convert2lab=True is not supported (no RGB inputs in medical volumes)")
    if slic_zero:
        raise ValueError("slic_zero=True is not supported")
    if max_size_factor != 3:
        raise ValueError(f"max_size_factor: only 3 is supported (large pieces are never split), got {max_size_factor!r}")
    if start_label not in (0, 1):
        raise ValueError(f"start_label should be 0 or 1, got {start_label!r}")
    if isinstance(n_segments, bool) or not isinstance(n_segments, (int, np.integer)) or n_segments <= 0:
        raise ValueError(f"n_segments must be a positive int, got {n_segments!r}")
    if not (isinstance(compactness, (int, float)) and math.isfinite(compactness) and compactness > 0):
        raise ValueError(f"compactness must be a finite number > 0, got {compactness!r}")
    if isinstance(max_num_iter, bool) or not isinstance(max_num_iter, int) or max_num_iter < 0:
        raise ValueError(f"max_num_iter must be an int >= 0, got {max_num_iter!r}")
    if not (isinstance(min_size_factor, (int, float)) and min_size_factor >= 0):
        raise ValueError(f"min_size_factor must be a number >= 0, got {min_size_factor!r}")
    stacked, n_spatial = _layout(image, channel_axis, modality_axis)
    n_mod, spatial_shape = stacked.shape[0], tuple(stacked.shape[2:])
    spacing3 = _parse_spacing(spacing, n_spatial)
    masks = _parse_mask(mask, spatial_shape, n_mod, modality_axis is not None, image.device)
    device = image.device
    compute = torch.float64 if image.dtype == torch.float64 else torch.float32
    volume = stacked.to(compute)
    if n_spatial == 2:
        volume = volume.unsqueeze(2)
        masks = [m.unsqueeze(0) if m is not None else None for m in masks]
    chosen = resolve_backend("slic", backend, device, _ITERATE)
    if chosen in ("reference", "cpu"):
        volume = volume.cpu()
        masks = [m.cpu() if m is not None else None for m in masks]
    opts = _Options(int(n_segments), float(compactness), max_num_iter, spacing3, bool(enforce_connectivity),
                    float(min_size_factor))
    out, offset = [], 0
    for labels in _map_modalities(lambda m: _segment_one(volume[m], masks[m], opts, chosen), n_mod, chosen):
        n_labels = int(labels.max()) + 1 if labels.numel() else 0
        out.append(torch.where(labels >= 0, labels + offset + start_label,
                               torch.full_like(labels, start_label - 1)))
        offset += max(n_labels, 0)
    result = torch.stack(out).to(device)
    if n_spatial == 2:
        result = result.squeeze(1)
    if modality_axis is None:
        result = result[0]
    return result.cpu().numpy() if was_numpy else result


def _map_modalities(segment, n_mod: int, backend: str):
    """``[segment(m) for m in range(n_mod)]``; on the cpu backend the modalities run concurrently,
    each on its share of the OpenMP threads. Whole modalities per thread need no barrier between
    them, which keeps a busy (shared) machine from stalling every k-means iteration; the kernels
    are deterministic, so the labels do not depend on the split."""
    threads = compiled_module().max_threads() if backend == "cpu" else 1
    workers = min(n_mod, threads)
    if workers < 2:
        return [segment(m) for m in range(n_mod)]
    from concurrent.futures import ThreadPoolExecutor

    def task(m):
        compiled_module().set_num_threads(max(1, threads // workers))  # this thread's OpenMP team
        return segment(m)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(task, range(n_mod)))


def _parse_spacing(spacing, n_spatial: int) -> Tuple[float, float, float]:
    if spacing is None:
        return (1.0, 1.0, 1.0)
    try:
        values = [float(s) for s in (spacing.tolist() if hasattr(spacing, "tolist") else spacing)]
    except TypeError:
        raise TypeError(f"spacing must be None or a sequence of {n_spatial} numbers, got {spacing!r}") from None
    if len(values) != n_spatial:
        raise ValueError(f"Input image is {n_spatial}D, but spacing has {len(values)} elements (expected {n_spatial}).")
    if not all(math.isfinite(v) and v > 0 for v in values):
        raise ValueError(f"spacing values must be finite and > 0, got {values}")
    return tuple([1.0] * (3 - n_spatial) + values)


def _parse_mask(mask, spatial_shape, n_mod: int, has_modality_axis: bool, device) -> List[Optional[torch.Tensor]]:
    if mask is None:
        return [None] * n_mod
    mask, _ = _as_tensor(mask, "mask")
    if mask.dtype != torch.bool:
        if mask.is_floating_point() or mask.is_complex():
            raise TypeError(f"mask must be a bool or integer array, got {mask.dtype}")
        mask = mask != 0
    mask = mask.to(device)
    if tuple(mask.shape) == spatial_shape:
        return [mask] * n_mod
    if has_modality_axis and tuple(mask.shape) == (n_mod,) + spatial_shape:
        return [mask[m] for m in range(n_mod)]
    expected = f"{spatial_shape}" + (f" or {(n_mod,) + spatial_shape}" if has_modality_axis else "")
    raise ValueError(f"mask must have the image's spatial shape {expected}, got {tuple(mask.shape)}")
