"""Box arithmetic of incremental inference: which positions of a layer's output a changed input box
affects, and which input region (with halo) recomputing an output box needs.

A box is given per row as ``starts`` (``[B, nd]`` int64) plus one common ``size`` (``nd`` ints): all
rows of a batch recompute boxes of the same size so that a layer runs once on the stacked boxes.
Recomputing a box larger than the affected one is always exact (the extra positions get their
reference values again), so sizes are the per-batch maximum and boxes are shifted to fit the map.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Window:
    """Sliding-window geometry of a conv/pool layer along the spatial dims."""

    kernel: Tuple[int, ...]
    stride: Tuple[int, ...]
    padding: Tuple[int, ...]
    dilation: Tuple[int, ...]

    def input_region(self, out_starts: torch.Tensor, out_size: Sequence[int]) -> Tuple[torch.Tensor, Tuple[int, ...]]:
        """Input region ``(starts, size)`` (starts may be negative, ends may pass the map: that is
        the layer's padding) that computing the output box ``(out_starts, out_size)`` needs."""
        s, p, d, k = (torch.tensor(v, dtype=torch.int64) for v in (self.stride, self.padding, self.dilation, self.kernel))
        starts = out_starts * s - p
        size = tuple((n - 1) * st + dl * (kk - 1) + 1 for n, st, dl, kk in zip(out_size, self.stride, self.dilation, self.kernel))
        return starts, size


def affected_output(window: Window, starts: torch.Tensor, size: Sequence[int], out_shape: Sequence[int]
                    ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-row ``[lo, hi)`` of the output positions whose receptive field meets the input box.

    Output ``o`` reads inputs ``[o*s - p, o*s - p + d*(k-1)]``; it is affected by ``[a, b)`` when
    ``o*s - p <= b - 1`` and ``o*s - p + d*(k-1) >= a``.
    """
    s, p, d, k = (torch.tensor(v, dtype=torch.int64) for v in (window.stride, window.padding, window.dilation, window.kernel))
    a = starts
    b = starts + torch.tensor(tuple(size), dtype=torch.int64)
    lo = torch.div(a + p - d * (k - 1) + s - 1, s, rounding_mode="floor")
    hi = torch.div(b - 1 + p, s, rounding_mode="floor") + 1
    n = torch.tensor(tuple(out_shape), dtype=torch.int64)
    lo = torch.minimum(lo.clamp(min=0), n)
    hi = torch.maximum(torch.minimum(hi, n), lo)
    return lo, hi


def common_box(lo: torch.Tensor, hi: torch.Tensor, shape: Sequence[int], cap: Optional[Sequence[int]] = None
               ) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """One box size for all rows (the largest ``hi - lo``, at least 1, at most the map, at most
    ``cap`` when given) and per-row starts shifted so that each box lies inside the map.

    With ``cap`` smaller than a row's extent the box is centred on the row's affected box and the
    rest keeps reference values: Krypton's projective-field threshold (approximate)."""
    n = torch.tensor(tuple(shape), dtype=torch.int64)
    extent = (hi - lo).amax(dim=0) if lo.shape[0] else torch.ones(len(shape), dtype=torch.int64)
    size = torch.minimum(extent.clamp(min=1), n)
    if cap is not None:
        size = torch.minimum(size, torch.tensor(tuple(cap), dtype=torch.int64))
    centre_shift = ((hi - lo) - size).clamp(min=0) // 2
    starts = torch.minimum((lo + centre_shift).clamp(min=0), n - size)
    return starts, tuple(int(v) for v in size)


def union_box(parts: Sequence[Tuple[torch.Tensor, Tuple[int, ...]]], shape: Sequence[int]
              ) -> Tuple[torch.Tensor, Tuple[int, ...]]:
    """Common box covering each row's boxes of several operands (residual additions, concatenations)."""
    lo = torch.stack([st for st, _ in parts]).amin(dim=0)
    hi = torch.stack([st + torch.tensor(sz, dtype=torch.int64) for st, sz in parts]).amax(dim=0)
    return common_box(lo, hi, shape)


def threshold_cap(shape: Sequence[int], tau: Optional[float]) -> Optional[Tuple[int, ...]]:
    """Largest box side allowed by a projective-field threshold ``tau`` in (0, 1]."""
    if tau is None:
        return None
    return tuple(max(1, math.ceil(tau * n)) for n in shape)


def box_parts(boxes, batch: int, nd: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Validate ``boxes`` (``[B, nd, 2]`` of ``[start, stop)``, or ``[B, K, nd, 2]``: several boxes
    per row) and return ``(lo, hi)``, each ``[B, K, nd]``."""
    t = torch.as_tensor(boxes, dtype=torch.int64).cpu()
    if t.dim() == 3:
        t = t.unsqueeze(1)
    if t.dim() == 4 and t.shape[1] == 0:
        raise ValueError(f"boxes must have at least one box per row, got shape {tuple(t.shape)}")
    if t.dim() != 4 or t.shape[0] != batch or t.shape[2] != nd or t.shape[3] != 2:
        raise ValueError(f"boxes must have shape [{batch}, {nd}, 2] ([start, stop) per spatial dim), got {tuple(t.shape)}")
    lo, hi = t[..., 0], t[..., 1]
    if bool((hi < lo).any()):
        raise ValueError("boxes must have stop >= start in every dim, got a reversed box")
    return lo, hi


def boxes_tensor(boxes, batch: int, nd: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """As :func:`box_parts`, each row's boxes merged to their bounding box: ``(lo, hi)`` ``[B, nd]``."""
    return merge_parts(*box_parts(boxes, batch, nd))


def merge_parts(lo: torch.Tensor, hi: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Bounding box ``[B, nd]`` of each row's non-empty boxes (``[B, K, nd]``; the first if none)."""
    keep = (hi > lo).all(-1)
    keep[:, 0] |= ~keep.any(1)
    big = torch.iinfo(torch.int64).max
    return (torch.where(keep[..., None], lo, big).amin(1), torch.where(keep[..., None], hi, -1).amax(1))
