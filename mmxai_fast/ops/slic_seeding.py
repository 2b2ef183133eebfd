"""SLIC preparation shared by every backend: scikit-image's rescaling, grid and mask seeding,
and the fixed-point scale of the centre sums (see ``ops/slic.py``)."""
from __future__ import annotations

import math
from typing import List, Optional, Tuple, cast

import numpy as np
import torch

# k-means iterations of the mask seeding, and the density of its random subset (scikit-image).
_SEED_KMEANS_ITERS = 5
_SEED_DENSE_FACTOR = 10
# The fixed-point scale of the centre sums is at most 2**40 and keeps every product below 2**52
# (exact in float64) and every sum below 2**62 (no int64 overflow).
_MAX_FIXED_SCALE_LOG2 = 40


def regular_grid_steps(shape, n_points) -> Tuple[List[slice], Tuple[int, int, int]]:
    from skimage.util import regular_grid

    slices = regular_grid(shape, n_points)
    steps = tuple(int(s.step) if s.step is not None else 1 for s in slices)
    return slices, cast(Tuple[int, int, int], steps)  # one slice per dim of the 3D ``shape``


def grid_seeds(shape, n_segments):
    slices, steps = regular_grid_steps(shape, n_segments)
    grids = np.mgrid[: shape[0], : shape[1], : shape[2]]
    centers = np.stack([g[slices].ravel() for g in grids], axis=-1).astype(np.float64)
    return centers, steps, float(max(steps))


def mask_seeds(mask: np.ndarray, n_segments: int, kmeans):
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
    _, grid_steps = regular_grid_steps(mask.shape, len(c))
    return c, grid_steps, float(max(steps))


def rescale(image: torch.Tensor, mask: Optional[torch.Tensor], ratio: float) -> torch.Tensor:
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


def fixed_scale(ratio: float, n: int) -> float:
    top = max(ratio, 1e-300)
    log2 = min(_MAX_FIXED_SCALE_LOG2, math.floor(math.log2(2.0 ** 62 / (top * max(n, 1)))),
               math.floor(math.log2(2.0 ** 52 / top)))
    return 2.0 ** log2
