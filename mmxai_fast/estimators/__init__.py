"""Shapley and Owen value estimators on the perturbation engine (issue 13).

``ShapleyEstimator(model, method=...)`` for models, :func:`estimate_shapley` for any vectorised
game; :func:`exact_shapley` enumerates small games. See ``docs/estimators.md``.
"""
from ._game import ModelGame, evaluate_coalitions, exact_shapley, shapley_coefficients
from .estimator import METHODS, EstimateResult, ShapleyEstimator, estimate_shapley
from .permutation import hierarchy_from_masks, hierarchy_paths

__all__ = ["ShapleyEstimator", "estimate_shapley", "EstimateResult", "METHODS", "exact_shapley",
           "shapley_coefficients", "evaluate_coalitions", "ModelGame", "hierarchy_paths", "hierarchy_from_masks"]
