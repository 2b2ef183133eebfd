"""End-to-end uses of the incremental runner: Occlusion (each window is a box relative to the input)
and Shapley value sampling (each permutation step adds one feature to the previous prefix: a chain
that reuses the previous step's activations). Each has a dense twin with the same arithmetic so that
tests and benchmarks compare like with like; both follow Captum 0.9's semantics (Occlusion over all
channels; ShapleyValueSampling starting from the baseline and adding features in permutation order).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch

from ..ops import OcclusionWindows, occlusion_attribution, occlusion_batch, perturb
from .boxes import common_box
from .executor import IncrementalRunner
from .plan import IncrementalPlan

Evaluate = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (inputs, boxes) -> outputs


def _example(x: torch.Tensor, name: str = "x") -> torch.Tensor:
    if not isinstance(x, torch.Tensor) or x.dim() < 3 or x.shape[0] != 1:
        got = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be one example (1, C, *S), got {got}")
    return x


def _select(out: torch.Tensor, target: Optional[int]) -> torch.Tensor:
    out = out.reshape(out.shape[0], -1)
    return out[:, 0] if target is None and out.shape[1] == 1 else out[:, 0 if target is None else target]


def occlusion_windows(x: torch.Tensor, window: Sequence[int], strides) -> OcclusionWindows:
    """Windows over all channels of ``x`` ``(1, C, *S)``: ``window`` and ``strides`` are spatial."""
    nd = x.dim() - 2
    strides = (strides,) * nd if isinstance(strides, int) else tuple(strides)
    return OcclusionWindows(tuple(x.shape[1:]), (x.shape[1], *window), (1, *strides))


def window_boxes(windows: OcclusionWindows, ids) -> torch.Tensor:
    """``[P, nd, 2]`` spatial ``[start, stop)`` of the windows ``ids`` (the channel dim dropped)."""
    rows = []
    for i in ids:
        starts, stops = windows.window_box(int(i))
        rows.append([[a, b] for a, b in zip(starts[1:], stops[1:])])
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), windows.ndim - 1, 2)


def _crops(t: torch.Tensor, starts: torch.Tensor, size) -> torch.Tensor:
    """``[P, C, *size]``: the boxes of ``t`` (``[C, *S]``) at each row of ``starts``."""
    return torch.stack([t[(slice(None),) + tuple(slice(a, a + n) for a, n in zip(st, size))]
                        for st in starts.tolist()])


def window_patches(x: torch.Tensor, windows: OcclusionWindows, ids, baseline=0.0):
    """Patch inputs of the windows ``ids`` for :meth:`IncrementalRunner.run_patch`: ``(patch
    [P, C, *size], starts [P, nd])``, ``x``'s box around each window with the window set to
    ``baseline`` (windows cropped at the border share one size: the box is shifted to fit)."""
    boxes = window_boxes(windows, ids)
    starts, size = common_box(boxes[..., 0], boxes[..., 1], x.shape[2:])
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand_as(x[0])
    patch = _crops(x[0], starts, size)
    fills = _crops(fill, starts, size)
    for r, (st, box) in enumerate(zip(starts.tolist(), boxes.tolist())):
        rel = (slice(None),) + tuple(slice(a - s, b - s) for (a, b), s in zip(box, st))
        patch[r][rel] = fills[r][rel]
    return patch, starts


def occlusion_diffs(evaluate, reference_output: torch.Tensor, x: torch.Tensor, windows: OcclusionWindows,
                    ids, baseline=0.0, target: Optional[int] = None, chunk: int = 16) -> torch.Tensor:
    """``[len(ids)]`` output differences ``f(x) - f(x occluded by window i)`` for ``target``;
    ``evaluate`` is an :data:`Evaluate` (given the occluded inputs) or an
    :class:`IncrementalRunner` around ``x`` (given only the windows' patches)."""
    ids = torch.as_tensor(list(ids), dtype=torch.int64)
    ref = _select(reference_output, target)[0]
    out = []
    for k in range(0, len(ids), chunk):
        part = ids[k:k + chunk]
        if isinstance(evaluate, IncrementalRunner):
            res = evaluate.run_patch(*window_patches(x, windows, part, baseline))
        else:
            res = evaluate(occlusion_batch(x[0], windows, part, baseline), window_boxes(windows, part))
        out.append(ref - _select(res, target))
    return torch.cat(out) if out else torch.zeros(0, dtype=x.dtype)


def dense_evaluator(model: torch.nn.Module) -> Evaluate:
    def evaluate(inputs, boxes):
        with torch.no_grad():
            return model(inputs)
    return evaluate


def occlusion(model: torch.nn.Module, x: torch.Tensor, window: Sequence[int], strides, baseline=0.0,
              target: Optional[int] = None, chunk: int = 16, incremental: bool = True,
              runner: Optional[IncrementalRunner] = None, threshold: Optional[float] = None) -> torch.Tensor:
    """Occlusion attribution ``(1, C, *S)`` of one example, as Captum's ``Occlusion`` with
    ``sliding_window_shapes=(C, *window)`` and ``strides=(1, *strides)`` (``baseline`` a number
    or broadcastable tensor), evaluated incrementally (default) or densely."""
    _example(x)
    windows = occlusion_windows(x, window, strides)
    ids = range(windows.num_windows)
    if incremental:
        runner = runner or IncrementalRunner(IncrementalPlan.from_module(model, x), x, threshold=threshold)
        diffs = occlusion_diffs(runner, runner.reference_output, x, windows, ids, baseline, target, chunk)
    else:
        with torch.no_grad():
            ref = model(x)
        diffs = occlusion_diffs(dense_evaluator(model), ref, x, windows, ids, baseline, target, chunk)
    return occlusion_attribution(diffs.float(), windows).unsqueeze(0)


def feature_boxes(feature_mask: torch.Tensor, num_features: int, spatial_shape: Sequence[int]) -> torch.Tensor:
    """``[F, nd, 2]`` spatial bounding boxes of each feature id of ``feature_mask`` (broadcastable to
    ``(C, *S)``); absent ids get an empty box at 0."""
    nd = len(spatial_shape)
    mask = feature_mask.reshape(-1, *feature_mask.shape[-nd:]) if feature_mask.dim() > nd else feature_mask[None]
    mask = mask.expand(mask.shape[0], *spatial_shape).long()
    ids = mask.reshape(-1)
    out = torch.zeros(num_features, nd, 2, dtype=torch.int64)
    for d in range(nd):
        shape = [1] * (nd + 1)
        shape[d + 1] = spatial_shape[d]
        coord = torch.arange(spatial_shape[d]).view(shape).expand_as(mask).reshape(-1)
        lo = torch.full((num_features,), spatial_shape[d], dtype=torch.int64).scatter_reduce(0, ids, coord, "amin")
        hi = torch.full((num_features,), -1, dtype=torch.int64).scatter_reduce(0, ids, coord, "amax") + 1
        empty = hi <= 0
        out[:, d, 0] = torch.where(empty, 0, lo)
        out[:, d, 1] = torch.where(empty, 0, hi)
    return out


def _prefix_patches(x: torch.Tensor, fill: torch.Tensor, ids: torch.Tensor, keep: torch.Tensor, boxes: torch.Tensor):
    """Patch inputs of coalition rows: ``x`` where the row's ``keep[r, feature id]`` holds, else
    ``fill``, on the common box of each row's ``boxes`` (``[R, nd, 2]``)."""
    starts, size = common_box(boxes[..., 0], boxes[..., 1], x.shape[1:])
    xs, fs, ms = _crops(x, starts, size), _crops(fill, starts, size), _crops(ids, starts, size)
    kept = torch.gather(keep, 1, ms.reshape(len(ms), -1)).reshape(ms.shape)
    return torch.where(kept, xs, fs), starts


def _ranks(perms: torch.Tensor) -> torch.Tensor:
    ranks = torch.empty_like(perms)
    ranks.scatter_(1, perms, torch.arange(perms.shape[1]).expand_as(perms).contiguous())
    return ranks


def shapley(model: torch.nn.Module, x: torch.Tensor, feature_mask: torch.Tensor, perms: torch.Tensor,
            baseline=0.0, target: Optional[int] = None, chains: int = 4, incremental: bool = True,
            runner: Optional[IncrementalRunner] = None, threshold: Optional[float] = None,
            steps: Optional[int] = None) -> torch.Tensor:
    """Shapley value sampling over the permutations ``perms`` (``[P, F]``, e.g. from
    ``ops.random_permutations``): per-feature values ``[F]`` (mean marginal contribution), as
    Captum's ``ShapleyValueSampling`` for those permutations. ``chains`` permutations advance
    together; incrementally each step recomputes only the bounding box of the feature it adds,
    starting from the previous step's activations. ``steps`` stops each chain after that many
    features (a partial chain with the cost per step of the full one: for benchmarks)."""
    _example(x)
    if perms.dim() != 2 or perms.shape[0] < 1:
        raise ValueError(f"perms must be [P, F] with P >= 1, got shape {tuple(perms.shape)}")
    num_features = perms.shape[1]
    fill = torch.as_tensor(baseline, dtype=x.dtype).expand_as(x[0])
    boxes = feature_boxes(feature_mask, num_features, x.shape[2:])
    nd = x.dim() - 2
    ids = (feature_mask.reshape(-1, *feature_mask.shape[-nd:]) if feature_mask.dim() > nd else feature_mask[None])
    ids = ids.long().expand_as(x[0])
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= num_features):
        raise ValueError(f"feature_mask ids must be in [0, {num_features}), got [{int(ids.min())}, {int(ids.max())}]")
    base_input = fill.unsqueeze(0).contiguous()
    if incremental:
        runner = runner or IncrementalRunner(IncrementalPlan.from_module(model, x), base_input, threshold=threshold)
        start = _select(runner.reference_output, target)[0]
    else:
        with torch.no_grad():
            start = _select(model(base_input), target)[0]
    totals = torch.zeros(num_features, dtype=torch.float64)
    for g in range(0, perms.shape[0], chains):
        group = perms[g:g + chains]
        ranks = _ranks(group)
        prev = start.expand(group.shape[0]).clone()
        states = runner.start_chains(group.shape[0]) if incremental else None
        for k in range(num_features if steps is None else min(steps, num_features)):
            added = group[:, k]
            if incremental:
                patch, starts = _prefix_patches(x[0], fill, ids, ranks <= k, boxes[added])
                out = _select(runner.step_patch(states, patch, starts), target)
            else:
                inputs = perturb(x[0], feature_mask, ranks <= k, fill, validate_ids=k == 0)
                with torch.no_grad():
                    out = _select(model(inputs), target)
            totals.index_add_(0, added, (out - prev).double())
            prev = out
    return (totals / perms.shape[0]).to(x.dtype)
