"""Approximate modes (opt-in, always measured against the exact map): adaptive drill-down Occlusion
(Krypton, Nakandala et al. 2019: a coarse large-stride pass, then the fine stride only where the
coarse map is most important) and the error report used for it and for the projective-field
threshold (``IncrementalRunner(threshold=tau)``).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch

from ..ops import occlusion_attribution
from .drivers import occlusion_diffs, occlusion_windows


def _average_ranks(v: torch.Tensor) -> torch.Tensor:
    values, inverse, counts = torch.unique(v, return_inverse=True, return_counts=True)
    first = torch.cumsum(counts, 0) - counts
    return (first + (counts - 1) / 2.0).double()[inverse]


def error_report(approx: torch.Tensor, exact: torch.Tensor, top: float = 0.01) -> Dict[str, float]:
    """Error of an approximate attribution map against the exact one.

    Returns ``max_abs`` (largest absolute difference), ``rank_correlation`` (Spearman, average
    ranks for ties) and ``top_overlap``: the share of the exact map's top ``top`` fraction of
    elements (largest values, ties at the threshold included) that is also in the approximate
    map's top fraction.
    """
    if approx.shape != exact.shape:
        raise ValueError(f"approx must have the shape of exact {tuple(exact.shape)}, got {tuple(approx.shape)}")
    a, e = approx.reshape(-1).double(), exact.reshape(-1).double()
    ra, re = _average_ranks(a), _average_ranks(e)
    ra, re = ra - ra.mean(), re - re.mean()
    denom = math.sqrt(float((ra * ra).sum()) * float((re * re).sum()))
    k = max(1, math.ceil(top * a.numel()))
    in_a = a >= torch.topk(a, k).values[-1]
    in_e = e >= torch.topk(e, k).values[-1]
    return {"max_abs": float((a - e).abs().max()),
            "rank_correlation": float((ra * re).sum()) / denom if denom > 0 else 1.0,
            "top_overlap": float((in_a & in_e).sum()) / float(in_e.sum())}


def _coarse_positions(count: int, factor: int) -> torch.Tensor:
    pos = list(range(0, count, factor))
    if pos[-1] != count - 1:
        pos.append(count - 1)
    return torch.tensor(pos, dtype=torch.int64)


def _interpolate_dim(values: torch.Tensor, dim: int, pos: torch.Tensor, count: int, peak: bool = False) -> torch.Tensor:
    """Piecewise-linear interpolation along ``dim`` from samples at ``pos`` to ``0 .. count-1``
    (``peak``: the larger of the two neighbouring samples instead)."""
    j = torch.arange(count)
    hi = torch.searchsorted(pos, j).clamp(1, max(len(pos) - 1, 1))
    lo = hi - 1 if len(pos) > 1 else torch.zeros_like(hi)
    hi = hi if len(pos) > 1 else torch.zeros_like(hi)
    span = (pos[hi] - pos[lo]).clamp(min=1).to(values.dtype)
    w = ((j - pos[lo]).to(values.dtype) / span).clamp(0, 1)
    shape = [1] * values.dim()
    shape[dim] = count
    a, b = values.index_select(dim, lo), values.index_select(dim, hi)
    return torch.maximum(a, b) if peak else a + (b - a) * w.view(shape)


def _covering(windows, top: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Which windows ``ids`` cover any element of the spatial mask ``top``."""
    return torch.tensor([bool(top[windows.window_slices(int(i))[1:]].any()) for i in ids], dtype=torch.bool)


def _top_mask(attr: torch.Tensor, focus: float) -> torch.Tensor:
    """Spatial mask of the map's top ``focus`` fraction of elements (ties included)."""
    flat = attr.reshape(-1)
    k = max(1, math.ceil(focus * flat.numel()))
    return attr >= torch.topk(flat, k).values[-1]


def drilldown_occlusion(evaluate, reference_output: torch.Tensor, x: torch.Tensor,
                        window: Sequence[int], strides, baseline=0.0, target: Optional[int] = None,
                        coarse_factor: int = 2, fraction: float = 0.05, chunk: int = 16, focus: float = 0.02
                        ) -> Tuple[torch.Tensor, Dict[str, float]]:
    """Adaptive drill-down Occlusion: evaluate every ``coarse_factor``-th window position per dim
    (plus the last), interpolate the window differences linearly over the window grid, then
    evaluate exactly the ``fraction`` of all windows (among those not yet evaluated) next to the
    largest coarse ``|difference|``; finally, until none is left, every window not yet evaluated
    that covers the top ``focus`` fraction of elements of the current optimistic map (unevaluated
    windows half-way between interpolation and the largest neighbouring coarse sample), so that the most important region rests on
    exact differences only (``focus=0`` skips this). The attribution uses exact
    differences where evaluated, interpolated ones elsewhere.

    Returns:
        the attribution ``(1, C, *S)`` and stats: ``windows`` (total), ``evaluated``, ``rounds``
        (of the focus refinement).
    """
    if coarse_factor < 1:
        raise ValueError(f"coarse_factor must be >= 1, got {coarse_factor}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    if not 0 <= focus <= 1:
        raise ValueError(f"focus must be in [0, 1], got {focus}")
    windows = occlusion_windows(x, window, strides)
    counts = windows.counts[1:]  # the channel dim has one position
    grids = [_coarse_positions(c, coarse_factor) for c in counts]
    # window index = j_0 + counts[0] * (j_1 + ...), first dim fastest; the channel position is 0
    mesh = torch.meshgrid(*grids, indexing="ij")
    flat = torch.zeros_like(mesh[0])
    for d in reversed(range(len(counts))):
        flat = flat * counts[d] + mesh[d]
    coarse_ids = flat.reshape(-1)
    coarse = occlusion_diffs(evaluate, reference_output, x, windows, coarse_ids, baseline, target, chunk)
    est = coarse.reshape(mesh[0].shape).double()
    peak, upper = est.abs(), est.clone()
    for d, (pos, c) in enumerate(zip(grids, counts)):
        est = _interpolate_dim(est, d, pos, c)
        peak = _interpolate_dim(peak, d, pos, c, peak=True)
        upper = _interpolate_dim(upper, d, pos, c, peak=True)
    # est is indexed [j_0, j_1, ...]; window ids run with j_0 fastest
    order = tuple(reversed(range(len(counts))))
    est_flat = est.permute(*order).reshape(-1)
    # refine next to the largest coarse samples (a peak between samples is missed by the
    # interpolation alone); the interpolated magnitude breaks ties
    priority = peak.permute(*order).reshape(-1) + 1e-3 * est_flat.abs()
    evaluated = torch.zeros(windows.num_windows, dtype=torch.bool)
    evaluated[coarse_ids] = True
    diffs = est_flat.clone()
    diffs[coarse_ids] = coarse.double()
    # the focus search ranks unevaluated windows half-way between the interpolation and the
    # largest neighbouring sample (the interpolation alone misses peaks between samples)
    optimistic = upper.permute(*order).reshape(-1)
    rest = (~evaluated).nonzero().squeeze(1)
    n_fine = min(len(rest), math.ceil(fraction * windows.num_windows))
    rounds = 0
    pick = rest[torch.topk(priority[rest], n_fine).indices] if n_fine else rest[:0]
    while True:
        if len(pick):
            diffs[pick] = occlusion_diffs(evaluate, reference_output, x, windows, pick, baseline, target, chunk).double()
            evaluated[pick] = True
        if focus == 0:
            break
        rest = (~evaluated).nonzero().squeeze(1)
        guess = torch.where(evaluated, diffs, (optimistic + diffs) / 2)
        top = _top_mask(occlusion_attribution(guess.float(), windows), focus).any(0)
        pick = rest[_covering(windows, top, rest)]
        if not len(pick):
            break
        rounds += 1
    attr = occlusion_attribution(diffs.float(), windows).unsqueeze(0)
    return attr, {"windows": windows.num_windows, "evaluated": int(evaluated.sum()), "rounds": rounds}
