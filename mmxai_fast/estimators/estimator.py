"""``ShapleyEstimator``: Shapley (and Owen) values of a model's output over input features, with
a choice of estimator, a budget of model evaluations and standard errors.

Methods (see ``docs/estimators.md`` for the papers and the measured errors):

==========================  ==================================================================
``"permutation"``           Captum's ShapleyValueSampling estimator (random orders) - the default
``"antithetic"``            orders and their reverses (Mitchell et al. 2022)
``"leverage"`` / ``"kernel"``  Leverage SHAP (Musco & Witter, ICLR 2025)
``"regression_adjusted"``   regression-adjusted Monte Carlo (Witter, Liu & Musco 2025)
``"stratified"``            Stratified SVARM (Kolpaczki et al., AAAI 2024)
``"owen"``                  Owen values over a feature hierarchy (hierarchical orders)
==========================  ==================================================================
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ._game import Game, ModelGame
from .kernel import LeverageState, RegressionAdjustedState
from .permutation import PermutationState, hierarchy_paths
from .stratified import StratifiedState
from .._validation import int_at_least

__all__ = ["ShapleyEstimator", "estimate_shapley", "METHODS", "EstimateResult"]

METHODS = ("permutation", "antithetic", "leverage", "kernel", "regression_adjusted", "stratified", "owen")
_PERMUTATION_METHODS = ("permutation", "antithetic", "owen")
#: With target_stderr, evaluations are added in rounds of this share of the budget.
_ROUND_SHARE = 0.125


class EstimateResult:
    """``values`` [F] and ``stderr`` [F] float64, ``n_evaluations`` spent."""

    def __init__(self, values: Tensor, stderr: Tensor, n_evaluations: int):
        self.values, self.stderr, self.n_evaluations = values, stderr, n_evaluations


def _check_method(method: str) -> str:
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return "leverage" if method == "kernel" else method


def _positive_int(value, name: str) -> Optional[int]:
    if value is None:
        return None
    int_at_least(value, name, 1)
    return value


def _budget(method: str, num_features: int, n_samples, n_evaluations, target_stderr) -> int:
    """Model evaluations allowed. ``n_samples`` counts orders for the permutation methods (Captum's
    meaning, ``F - 1`` evaluations each plus the two ends), coalitions for the others."""
    n_samples = _positive_int(n_samples, "n_samples")
    n_evaluations = _positive_int(n_evaluations, "n_evaluations")
    if target_stderr is not None and not (isinstance(target_stderr, (int, float)) and target_stderr > 0):
        raise ValueError(f"target_stderr must be a number > 0 or None, got {target_stderr!r}")
    if n_samples is not None and n_evaluations is not None:
        raise ValueError("give n_samples or n_evaluations, not both")
    if n_evaluations is not None:
        return n_evaluations
    per = max(1, num_features - 1) * (2 if method == "antithetic" else 1) if method in _PERMUTATION_METHODS else 1
    if n_samples is None:
        n_samples = 25 if target_stderr is None or method not in _PERMUTATION_METHODS else 1000
    return n_samples * per + 2 if method in _PERMUTATION_METHODS else n_samples


def _make_state(method, game, num_features, generator, device, hierarchy):
    if method == "owen":
        if hierarchy is None:
            raise ValueError("method 'owen' needs hierarchy= (parent array or nested lists)")
        return PermutationState(game, num_features, generator, device, paths=hierarchy_paths(hierarchy, num_features))
    if hierarchy is not None:
        raise ValueError(f"hierarchy is only used by method 'owen', got method {method!r}")
    if method in ("permutation", "antithetic"):
        return PermutationState(game, num_features, generator, device, antithetic=method == "antithetic")
    cls = {"leverage": LeverageState, "regression_adjusted": RegressionAdjustedState,
           "stratified": StratifiedState}[method]
    return cls(game, num_features, generator, device)


def estimate_shapley(game: Game, num_features: int, method: str = "permutation", n_samples: Optional[int] = None,
                     n_evaluations: Optional[int] = None, target_stderr: Optional[float] = None,
                     seed: Optional[int] = None, hierarchy: Union[None, Tensor, Sequence] = None,
                     device: Union[None, str, torch.device] = None) -> EstimateResult:
    """Shapley values of any game ``value(rows [R, F] bool) -> [R]`` (one call per batch of rows).

    Args:
        game: vectorised value function (see :mod:`mmxai_fast.estimators._game`).
        num_features: ``F``.
        method: one of :data:`METHODS`.
        n_samples: orders (permutation methods; default 25, Captum's) or coalitions (others).
        n_evaluations: the budget in game evaluations instead (overrides the default).
        target_stderr: stop once every standard error is at most this (evaluations are added in
            rounds of 1/8 of the budget, which stays the cap).
        seed: seeds a private generator (None: drawn from torch's global RNG).
        hierarchy: Owen values' feature tree (:func:`~mmxai_fast.estimators.hierarchy_paths`).
        device: where the bookkeeping runs (the game's rows are made there).

    Returns:
        :class:`EstimateResult`.
    """
    method = _check_method(method)
    num_features = _positive_int(num_features, "num_features")
    budget = _budget(method, num_features, n_samples, n_evaluations, target_stderr)
    device = torch.device(device or "cpu")
    generator = torch.Generator(device=device)
    generator.manual_seed(int(torch.randint(0, 2 ** 62, ())) if seed is None else seed)
    state = _make_state(method, game, num_features, generator, device, hierarchy)
    if target_stderr is None:
        state.step(max(1, budget - state.n_evaluations))
        values, stderr = state.estimate()
        return EstimateResult(values, stderr, state.n_evaluations)
    per_round = max(2, math.ceil(_ROUND_SHARE * budget))
    while True:
        state.step(max(1, min(per_round, budget - state.n_evaluations)))
        values, stderr = state.estimate()
        if float(stderr.max()) <= target_stderr or state.n_evaluations >= budget:
            return EstimateResult(values, stderr, state.n_evaluations)


class ShapleyEstimator:
    """Shapley values of ``forward_func`` over the features of one input, on the engine.

    Every coalition becomes a perturbed copy of the input (kept features from ``inputs``, the
    others from ``baselines``; :func:`mmxai_fast.ops.perturb`) evaluated in chunks without
    gradients. ``method="permutation"`` is the estimator of Captum's ``ShapleyValueSampling``
    (same number of orders ``n_samples``, default 25; the empty and the full coalition are
    evaluated once for all orders, so ``n_samples * (F - 1) + 2`` evaluations instead of Captum's
    ``n_samples * F + 1``); the other methods are opt-in (module docstring).

    After :meth:`attribute`: ``last_stderr`` (standard errors, the attribution's shape),
    ``last_values`` / ``last_values_stderr`` (``[F]`` per feature), ``last_n_evaluations``.
    """

    def __init__(self, forward_func: Callable[..., Tensor], method: str = "permutation"):
        if not callable(forward_func):
            raise ValueError(f"forward_func must be callable, got {type(forward_func).__name__}")
        self.forward_func = forward_func
        self.method = _check_method(method)
        self.last_stderr: Optional[Tensor] = None
        self.last_values: Optional[Tensor] = None
        self.last_values_stderr: Optional[Tensor] = None
        self.last_n_evaluations = 0

    def attribute(self, inputs: Tensor, baselines: Union[None, float, Tensor] = None, target: Optional[int] = None,
                  feature_mask: Optional[Tensor] = None, n_samples: Optional[int] = None,
                  n_evaluations: Optional[int] = None, target_stderr: Optional[float] = None,
                  seed: Optional[int] = None, hierarchy: Union[None, Tensor, Sequence] = None,
                  additional_forward_args: Optional[tuple] = None,
                  perturbations_per_eval: Optional[int] = None) -> Tensor:
        """Attributions of ``forward_func(inputs)[:, target]`` (Captum's argument names).

        Args:
            inputs: ``(1, *S)`` floating tensor, one example.
            baselines: None (0), a number or a tensor broadcastable to ``inputs``.
            target: output index, or None for one output per example.
            feature_mask: integer ids ``0 .. F-1`` broadcastable to ``inputs`` (None: every element
                its own feature).
            n_samples, n_evaluations, target_stderr, seed, hierarchy: see :func:`estimate_shapley`.
            additional_forward_args: extra positional arguments of ``forward_func``.
            perturbations_per_eval: copies per model call (default: about 2^24 input elements).

        Returns:
            float32 attributions shaped like ``inputs`` (every element gets its feature's value).

        Raises:
            ValueError: bad arguments, before any model call.
        """
        if not isinstance(inputs, Tensor) or not inputs.is_floating_point():
            raise ValueError(f"inputs must be a floating torch.Tensor, got {type(inputs).__name__}")
        if inputs.dim() < 1 or inputs.shape[0] != 1:
            raise ValueError(f"inputs must hold one example (shape (1, ...)), got shape {tuple(inputs.shape)}")
        if feature_mask is None:
            feature_mask = torch.arange(inputs.numel(), device=inputs.device).view(inputs.shape)
        if not isinstance(feature_mask, Tensor) or feature_mask.is_floating_point() or feature_mask.is_complex():
            raise ValueError(f"feature_mask must be an integer tensor, got {feature_mask!r:.60}")
        if feature_mask.numel() and int(feature_mask.min()) < 0:
            raise ValueError(f"feature_mask ids must be >= 0, got min {int(feature_mask.min())}")
        try:
            torch.broadcast_shapes(feature_mask.shape, inputs.shape)
        except RuntimeError:
            raise ValueError(f"feature_mask must be broadcastable to inputs {tuple(inputs.shape)}, got "
                             f"{tuple(feature_mask.shape)}") from None
        if target is not None and (isinstance(target, bool) or not isinstance(target, int) or target < 0):
            raise ValueError(f"target must be an int >= 0 or None, got {target!r}")
        if baselines is None:
            baselines = 0.0
        if isinstance(baselines, Tensor):
            baselines = baselines.to(device=inputs.device, dtype=inputs.dtype)
        mask = feature_mask.to(inputs.device)
        game = ModelGame(self.forward_func, inputs, baselines, mask, target, additional_forward_args or (),
                         _positive_int(perturbations_per_eval, "perturbations_per_eval"))
        result = estimate_shapley(game, game.num_features, self.method, n_samples, n_evaluations, target_stderr,
                                  seed, hierarchy, inputs.device)
        self.last_values, self.last_values_stderr = result.values, result.stderr
        self.last_n_evaluations = game.n_evaluations
        full_mask = mask.expand(inputs.shape).long()
        self.last_stderr = result.stderr.float()[full_mask]
        return result.values.to(inputs.dtype)[full_mask]
