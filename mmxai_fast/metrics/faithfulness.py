"""Faithfulness of a heatmap: deletion and insertion curves, their areas, and delta-AUPC.

Features (superpixels, or any integer mask) are ranked by their mean attribution, most important
first. The *deletion* curve removes the first ``n_k`` features (they take the baseline) at
``k = 0 .. steps`` evenly spaced fractions of the features; the *insertion* curve starts from the
baseline and restores them in the same order (Petsiuk et al., RISE, BMVC 2018; Samek et al. 2017
for the area over the perturbation curve). Areas use the trapezoid rule on the fraction axis
``[0, 1]``, in the model's output units. A faithful heatmap makes deletion fall fast (small
area) and insertion rise fast (large area). ``delta_aupc`` compares with random orders (averaged
over ``n_random`` orders): ``deletion: area(random) - area(heatmap)``, ``insertion: area(heatmap)
- area(random)``; positive means better than random. All curves go to the model in one batch of
coalitions (:class:`~mmxai_fast.estimators.ModelGame`).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from torch import Tensor

from ..estimators._game import ModelGame
from .._validation import int_at_least

__all__ = ["feature_scores", "perturbation_curves"]


def feature_scores(attributions: Tensor, feature_mask: Tensor, num_features: int) -> Tensor:
    """Mean attribution per feature ``[F]`` float64 (0 for an id with no element)."""
    mask = feature_mask.expand_as(attributions).flatten().long().cpu()
    values = attributions.detach().flatten().double().cpu()
    sums = torch.zeros(num_features, dtype=torch.float64).index_add_(0, mask, values)
    counts = torch.bincount(mask, minlength=num_features).double()
    return sums / counts.clamp(min=1)


def _curve_rows(order: Tensor, num_features: int, counts: Tensor, fixed: Optional[int]) -> Dict[str, Tensor]:
    """Deletion and insertion rows ``[K + 1, F]`` for one order of the movable features."""
    rank = torch.empty(num_features, dtype=torch.int64)
    rank[order] = torch.arange(order.numel())
    if fixed is not None:
        rank[fixed] = num_features  # never among the first n_k
    top = rank.unsqueeze(0) < counts.unsqueeze(1)  # [K+1, F]: among the first n_k
    insertion = top.clone()
    if fixed is not None:
        insertion[:, fixed] = True
    return {"deletion": ~top, "insertion": insertion}


def _area(curve: Tensor) -> float:
    return float(((curve[1:] + curve[:-1]) / 2).mean()) if curve.numel() > 1 else float(curve[0])


def perturbation_curves(forward_func, inputs: Tensor, attributions: Tensor, feature_mask: Tensor,
                        baselines: Union[float, Tensor] = 0.0, target: Optional[int] = None, steps: int = 20,
                        n_random: int = 4, seed: int = 0, fixed_feature: Optional[int] = None) -> Dict:
    """Deletion / insertion curves, areas and delta-AUPC of one heatmap (module docstring).

    Args:
        inputs: ``(1, *S)`` one example; ``attributions`` its heatmap (``(1, *S)`` or ``(*S)``).
        feature_mask: integer ids ``0 .. F-1`` broadcastable to ``inputs``.
        baselines, target: as for the estimators.
        steps: points per curve minus one (``fraction = k / steps``).
        n_random: random orders averaged for the reference curves (0: no delta-AUPC).
        seed: seeds the random orders.
        fixed_feature: an id that is never removed (the pipeline's background, 0).

    Returns:
        ``{"fractions", "deletion": {"curve", "area", "random_curve", "random_area"}, "insertion":
        {...}, "delta_aupc": {"deletion", "insertion"}, "n_evaluations"}`` (lists and floats).
    """
    int_at_least(steps, "steps", 1)
    int_at_least(n_random, "n_random", 0)
    mask = feature_mask.to(inputs.device)
    game = ModelGame(forward_func, inputs, baselines, mask, target)
    num = game.num_features
    heat = attributions.reshape(inputs.shape[1:]) if attributions.numel() == inputs.numel() else attributions
    scores = feature_scores(heat, mask.reshape(mask.shape[1:]) if mask.dim() == inputs.dim() else mask, num)
    movable = torch.tensor([f for f in range(num) if f != fixed_feature], dtype=torch.int64)
    if movable.numel() == 0:
        raise ValueError("feature_mask must have at least one feature besides fixed_feature")
    counts = torch.round(torch.linspace(0, movable.numel(), steps + 1, dtype=torch.float64)).long()
    heat_order = movable[scores[movable].argsort(descending=True, stable=True)]
    generator = torch.Generator().manual_seed(seed)
    orders = [heat_order] + [movable[torch.randperm(movable.numel(), generator=generator)] for _ in range(n_random)]
    rows: Dict[str, List[Tensor]] = {"deletion": [], "insertion": []}
    for order in orders:
        for kind, r in _curve_rows(order, num, counts, fixed_feature).items():
            rows[kind].append(r)
    all_rows = torch.cat(rows["deletion"] + rows["insertion"]).to(inputs.device)
    values = game(all_rows).cpu().view(2, len(orders), steps + 1)
    result: Dict = {"fractions": (counts.double() / movable.numel()).tolist(), "n_evaluations": game.n_evaluations,
                    "features": int(movable.numel())}
    for index, kind in enumerate(("deletion", "insertion")):
        curve = values[index, 0]
        entry = {"curve": curve.tolist(), "area": _area(curve)}
        if n_random:
            random_curve = values[index, 1:].mean(0)
            entry.update(random_curve=random_curve.tolist(), random_area=_area(random_curve))
        result[kind] = entry
    if n_random:
        result["delta_aupc"] = {"deletion": result["deletion"]["random_area"] - result["deletion"]["area"],
                                "insertion": result["insertion"]["area"] - result["insertion"]["random_area"]}
    return result
