"""The demo's Shapley explanation: :class:`~mmxai_fast.estimators.ShapleyEstimator` on the case's
superpixels, packaged as a pipeline :class:`~mmxai_fast.pipeline.Explanation` (same files and
figures as the Captum methods).

The background (superpixel 0 of the pipeline) is never removed: the baseline keeps the input
there, so its voxels are given to the first superpixel (removing them changes nothing) and the
game has exactly the ``F`` superpixels. With ``method="owen"`` the superpixels are grouped by a
coarser SLIC of the same modality (:func:`~mmxai_fast.estimators.hierarchy_from_masks`).
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Optional

from torch import Tensor, nn

if TYPE_CHECKING:
    from .pipeline import Baseline, Case, Explanation, Superpixels

__all__ = ["ESTIMATOR_METHOD", "shapley_explanation"]

#: The demo's name of this method (a directory of the outputs).
ESTIMATOR_METHOD = "ShapleyEstimator"


class _CountingModel(nn.Module):
    """Counts the model's calls and inputs and times its forwards."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model, self.calls, self.examples, self.seconds = model, 0, 0, 0.0

    def forward(self, x: Tensor) -> Tensor:
        start = time.perf_counter()
        out = self.model(x)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.examples += x.shape[0]
        return out


def shapley_explanation(model: nn.Module, case: "Case", target: int, superpixels: "Superpixels", method: str,
                        n_evaluations: int, seed: int = 0, coarse_segments: Optional[int] = None,
                        batch_size: int = 16, mask: Optional[Tensor] = None,
                        baseline: Optional["Baseline"] = None) -> "Explanation":
    """Shapley (or Owen) values of ``model(case)[target]`` over ``case``'s superpixels.

    Args:
        method: a :data:`mmxai_fast.estimators.METHODS` entry.
        n_evaluations: the budget in model inputs.
        coarse_segments: SLIC segments per modality of the coarse level (``method="owen"``).
        mask: the superpixels (``superpixel_mask(case, superpixels)``) when already computed.
        baseline: what removed superpixels become (default zeros; the demo uses a blur).
    """
    from dataclasses import asdict, replace

    from .estimators import ShapleyEstimator, hierarchy_from_masks
    from .pipeline import Baseline, superpixel_mask
    from .pipeline.explain import Explanation, RunStats, modality_importance
    from .pipeline.methods import baseline_input

    baseline = baseline or Baseline.zeros()

    start = time.perf_counter()
    mask = superpixel_mask(case, superpixels) if mask is None else mask
    fg = mask > 0
    features = (mask - 1).clamp(min=0)
    hierarchy = None
    if method == "owen":
        coarse = superpixel_mask(case, replace(superpixels, n_segments=coarse_segments or 8))
        hierarchy = hierarchy_from_masks(features[fg], coarse[fg])
    counted = _CountingModel(model)
    estimator = ShapleyEstimator(counted, method=method)
    was_training = model.training
    model.eval()
    try:
        values = estimator.attribute(case.image[None], baselines=baseline_input(case, baseline)[None],
                                     target=target, feature_mask=features[None], n_evaluations=n_evaluations,
                                     seed=seed, hierarchy=hierarchy, perturbations_per_eval=batch_size)[0]
    finally:
        model.train(was_training)
    assert estimator.last_stderr is not None
    attributions = values.float().masked_fill(~fg, 0.0)
    stderr = estimator.last_stderr[0].masked_fill(~fg, 0.0)
    stats = RunStats(ESTIMATOR_METHOD, counted.calls, time.perf_counter() - start, counted.seconds, counted.examples)
    settings = {"method_kwargs": {"method": method, "n_evaluations": n_evaluations,
                                  **({"coarse_segments": coarse_segments} if hierarchy is not None else {})},
                "baseline": baseline.describe(), "seed": seed,
                "superpixels": {**asdict(superpixels), "features": int(mask.max())}}
    return Explanation(attributions=attributions, method=ESTIMATOR_METHOD, target=target, feature_mask=mask,
                       modality_importance=modality_importance(attributions, case.modalities), stats=stats,
                       modalities=case.modalities, settings=settings, stderr=stderr)
