"""Captum-compatible :class:`KernelShap` on the perturbation engine, with opt-in extensions.

Kernel SHAP (Lundberg & Lee 2017) is LIME with the Shapley kernel: the weighted linear fit of
``f(z)`` on binary coalitions ``z`` whose weights are ``pi(z) = (F - 1) / (C(F, |z|) |z| (F - |z|))``
has the Shapley values as coefficients, under the constraints ``phi_0 = f(0)`` and
``sum phi = f(1) - f(0)``. Captum samples coalition sizes ``k ~ pi`` (uniform subsets of that
size, weight 1) after the full and the empty coalition (weight 10^6, standing for the
constraints) and fits ``SkLearnLinearRegression``. Here the same samples (Captum's draws at the
same seed) are evaluated by the engine (see :mod:`mmxai_fast.attr.lime`).

Extension path (keyword-only, off by default): ``paired`` sampling (every coalition followed by
its complement; Covert & Lee 2021), ``exact`` enumeration of all ``2^F`` coalitions with the
kernel weights, and an on-device constrained weighted least-squares solve
(:func:`~mmxai_fast.attr.linear_model.weighted_least_squares`): the constraints are imposed
exactly by writing ``phi = (f(1) - f(0)) / F + u`` with ``sum u = 0`` (centred design
``z - mean(z)``), so full enumeration returns the Shapley values to float64 rounding.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Tuple, Union

import torch
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import KernelShap as _CaptumKernelShap
from captum.attr._core import lime as _captum_lime
from captum.log import log_usage
from torch import Tensor
from torch.distributions.categorical import Categorical

from ._errors import AttributionInputError
from ._perturbers import CoalitionPerturber
from .lime import Lime, check_captum_path
from .linear_model import weighted_least_squares

__all__ = ["KernelShap"]

#: exact=True enumerates 2^F coalitions: capped at F = 20 (about a million model evaluations).
MAX_EXACT_FEATURES = 20


def _size_probabilities(num_features: int, device: torch.device) -> Tensor:
    """Captum's coalition-size distribution: ``P(k) ∝ (F - 1) / (k (F - k))``, ``k = 1 .. F - 1``."""
    k = torch.arange(1, num_features, dtype=torch.float64, device=device)
    return (num_features - 1) / (k * (num_features - k))


def captum_kernel_shap_rows(groups: int, n_samples: int, num_features: int, device: torch.device) -> Tensor:
    """Captum's ``kernel_shap_perturb_generator`` draws, one sample at a time on the CPU generator
    (a ``Categorical`` size, then a ``randn`` row thresholded at its ``F - k``-th value), so the
    same seed gives Captum's samples (for the first group; see :mod:`mmxai_fast.attr.lime`)."""
    sizes = torch.arange(num_features, dtype=torch.float)
    probs = torch.tensor(num_features - 1) / (sizes * (num_features - sizes))
    probs[0] = 0.0
    size_distribution = Categorical(probs)
    rows = torch.zeros((groups, n_samples, num_features), dtype=torch.bool)
    rows[:, 0] = True
    for g in range(groups):
        for r in range(2, n_samples):
            selected = int(size_distribution.sample())
            rand_vals = torch.randn(1, num_features)
            threshold = torch.kthvalue(rand_vals, num_features - selected).values.item()
            rows[g, r] = rand_vals[0] > threshold
    return rows.to(device)


def kernel_shap_rows(groups: int, n_samples: int, num_features: int, device: torch.device,
                     paired: bool = False) -> Tensor:
    """``[G, R]`` Kernel SHAP samples, ``R = n_samples``: the full coalition, the empty one, then
    sizes ``k ~ P(k)`` with uniform random subsets of size ``k``. Unpaired: Captum's own draws
    (:func:`captum_kernel_shap_rows`); ``paired``: each followed by its complement, drawn at once
    on ``device``."""
    if num_features < 2:
        raise AttributionInputError(f"KernelShap needs at least 2 features, got {num_features}")
    if not paired:
        return captum_kernel_shap_rows(groups, n_samples, num_features, device)
    ends = torch.stack((torch.ones(num_features, dtype=torch.bool, device=device),
                        torch.zeros(num_features, dtype=torch.bool, device=device)))
    middle = max(n_samples - 2, 0)
    draws = math.ceil(middle / 2) if paired else middle
    probs = _size_probabilities(num_features, device)
    sizes = torch.multinomial(probs.expand(groups, -1), draws, replacement=True) + 1  # [G, draws]
    ranks = torch.rand((groups, draws, num_features), device=device).argsort(-1).argsort(-1)
    chosen = ranks < sizes.unsqueeze(-1)
    if paired:
        chosen = torch.stack((chosen, ~chosen), dim=2).reshape(groups, 2 * draws, num_features)[:, :middle]
    rows = torch.cat((ends.expand(groups, -1, -1), chosen), dim=1)
    return rows[:, :n_samples]


def all_coalitions(num_features: int, device: torch.device) -> Tuple[Tensor, Tensor]:
    """All ``2^F`` coalitions (full, empty, then the others) ``[2^F, F]`` and their Shapley-kernel
    weights ``[2^F]`` float64 (the two ends get weight 0: they enter as constraints)."""
    codes = torch.arange(2 ** num_features, device=device)
    bits = (codes.unsqueeze(1) >> torch.arange(num_features, device=device)) & 1
    middle = bits[1:-1].bool()
    rows = torch.cat((torch.ones((1, num_features), dtype=torch.bool, device=device),
                      torch.zeros((1, num_features), dtype=torch.bool, device=device), middle))
    sizes = middle.sum(1).to(torch.float64)
    binom = torch.exp(torch.lgamma(torch.tensor(num_features + 1.0, dtype=torch.float64, device=device))
                      - torch.lgamma(sizes + 1) - torch.lgamma(num_features - sizes + 1))
    weights = torch.cat((torch.zeros(2, dtype=torch.float64, device=device),
                         (num_features - 1) / (binom * sizes * (num_features - sizes))))
    return rows, weights


def constrained_shapley_solve(rows: Tensor, outputs: Tensor, weights: Tensor) -> Tensor:
    """Weighted least squares with Kernel SHAP's constraints imposed exactly, batched on groups.

    Args:
        rows: ``[G, R, F]`` coalitions; row 0 the full and row 1 the empty coalition.
        outputs: ``[G, R]`` model outputs on the rows.
        weights: ``[G, R]`` weights of the rows (those of rows 0 and 1 are not used).

    Returns:
        ``[G, F]`` float64 attributions with ``sum = f(full) - f(empty)``.
    """
    num_features = rows.shape[-1]
    values = outputs.to(device=rows.device, dtype=torch.float64)
    full, empty = values[:, 0], values[:, 1]
    delta = (full - empty).unsqueeze(-1)  # [G, 1]
    if rows.shape[1] <= 2:
        return delta.expand(-1, num_features) / num_features
    z = rows[:, 2:].to(torch.float64)
    target = values[:, 2:] - empty.unsqueeze(-1) - z.sum(-1) * delta / num_features
    centred = z - z.mean(-1, keepdim=True)
    u, _ = weighted_least_squares(centred, target, weights[:, 2:], fit_intercept=False)
    return delta / num_features + u


def _check_extensions(paired, exact, solver):
    if not isinstance(paired, bool):
        raise AttributionInputError(f"paired must be a bool, got {paired!r}")
    if not (isinstance(exact, bool) or exact == "auto"):
        raise AttributionInputError(f"exact must be a bool or 'auto', got {exact!r}")
    if solver not in (None, "sklearn", "torch"):
        raise AttributionInputError(f"solver must be None, 'sklearn' or 'torch', got {solver!r}")
    if solver == "sklearn" and (paired or exact):
        raise AttributionInputError("paired and exact use the on-device solve: leave solver=None or pass 'torch'")
    return solver == "torch" or paired or bool(exact)


class KernelShap(Lime, _CaptumKernelShap):
    """Drop-in for ``captum.attr.KernelShap`` (Captum 0.9), batched on the engine.

    Same constructor and :meth:`attribute` arguments and, by default, the same estimator: the
    full and the empty coalition (weight ``inf_weight = 1e6``), then coalitions of size
    ``k ~ (F - 1) / (k (F - k))`` with uniform random members (weight 1), fitted by
    ``SkLearnLinearRegression``. The samples are Captum's draws (a ``Categorical`` and a ``randn``
    per sample on the CPU generator), so the same seed gives Captum's samples (for one example or
    a scalar-per-batch model, as for ``Lime``). A subclass of Captum's ``KernelShap`` and
    of :class:`~mmxai_fast.attr.Lime` (Captum's hierarchy); differences as for ``Lime``.

    Opt-in extensions (keyword-only; any of them selects the on-device solve, see the module
    docstring):

    - ``paired=True``: each sampled coalition is followed by its complement (same size
      distribution, lower variance at equal model evaluations).
    - ``exact=True``: evaluate all ``2^F`` coalitions (``n_samples`` is ignored; ``F <= 20``) and
      return the exact Shapley values; ``exact="auto"``: do so when ``2^F <= n_samples``, else
      sample.
    - ``solver="torch"``: Captum's sampling, solved on the device with the constraints imposed
      exactly instead of the 10^6 weights (the default ``solver=None`` means ``"sklearn"``
      unless ``paired`` or ``exact`` is set).
    """

    def __init__(self, forward_func: Callable[..., Union[int, float, Tensor]]) -> None:
        _CaptumKernelShap.__init__(self, forward_func)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        return_input_shape: bool = True,
        show_progress: bool = False,
        *,
        paired: bool = False,
        exact: Union[bool, str] = False,
        solver: Optional[str] = None,
        sampler: Optional[str] = None,
        background_id: Optional[int] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Kernel SHAP attributions, as ``captum.attr.KernelShap.attribute``.

        Args:
            inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
            perturbations_per_eval, return_input_shape, show_progress: as
                :meth:`mmxai_fast.attr.Lime.attribute` (progress text "Kernel Shap attribution").
            paired: complementary coalition sampling.
            exact: ``True`` / ``"auto"``: enumerate all ``2^F`` coalitions (see the class).
            solver: ``None``, ``"sklearn"`` (Captum's fit) or ``"torch"`` (on-device solve).
            sampler: ``"leverage"``: Leverage SHAP coalitions (:mod:`mmxai_fast.estimators.kernel`),
                on-device solve; ``None`` / ``"kernel"``: the sampling above.
            background_id: a ``feature_mask`` id that is no feature (no coalition column, always
                at its input value, attribution 0 there; ``F`` counts the other ids), as
                :meth:`mmxai_fast.attr.Lime.attribute`. None (default): Captum's semantics.

        Returns:
            float32 attributions shaped like the inputs (first dim ``N`` for per-example
            outputs, 1 for a scalar per batch), or the ``[1, F]`` / ``[N, F]`` coefficients.

        Raises:
            AttributionInputError: invalid arguments (fewer than 2 features, ``exact=True`` with
                more than 20, ``n_samples < 2`` on the on-device path...) or model outputs.
        """
        if sampler not in (None, "kernel", "leverage"):
            raise AttributionInputError(f"sampler must be None, 'kernel' or 'leverage', got {sampler!r}")
        self._exact: Union[bool, str] = False
        if sampler == "leverage":  # Leverage SHAP (Musco & Witter 2025), see mmxai_fast.estimators.kernel
            from ..estimators.kernel import leverage_rows, leverage_weights
            return self._attribute_on_engine(inputs, baselines, target, additional_forward_args, feature_mask,
                                             n_samples, perturbations_per_eval, return_input_shape, show_progress,
                                             leverage_rows, lambda engine, rows: leverage_weights(rows),
                                             solve=constrained_shapley_solve, background_id=background_id)
        on_device = _check_extensions(paired, exact, solver)
        self._exact = False
        if not on_device:
            if not self._runs_on_engine():
                check_captum_path(background_id)
                return _CaptumKernelShap.attribute(
                    self, inputs, baselines=baselines, target=target,
                    additional_forward_args=additional_forward_args, feature_mask=feature_mask,
                    n_samples=n_samples,
                    perturbations_per_eval=1 if perturbations_per_eval == "auto" else perturbations_per_eval,
                    return_input_shape=return_input_shape, show_progress=show_progress)
            inf_weight = float(self.inf_weight)

            def weigh(perturber: CoalitionPerturber, rows: Tensor) -> Tensor:
                size = rows.sum(-1)
                ends = (size == 0) | (size == rows.shape[-1])
                return torch.where(ends, inf_weight, 1.0).to(torch.float64)

            def draw_rows(groups: int, n: int, num_features: int, device: torch.device) -> Tensor:
                return kernel_shap_rows(groups, n, num_features, device)

            return self._attribute_on_engine(inputs, baselines, target, additional_forward_args, feature_mask,
                                             n_samples, perturbations_per_eval, return_input_shape, show_progress,
                                             draw_rows, weigh, background_id=background_id)
        if isinstance(n_samples, int) and not isinstance(n_samples, bool) and n_samples < 2:
            raise AttributionInputError(f"n_samples must be >= 2 with the on-device solve (the full and the "
                                        f"empty coalition), got {n_samples}")
        self._exact = exact
        exact_weights = {}

        def draw_exact_or_paired(groups: int, n: int, num_features: int, device: torch.device) -> Tensor:
            enumerate_all = exact is True or (exact == "auto" and num_features <= MAX_EXACT_FEATURES
                                              and 2 ** num_features <= n)
            if not enumerate_all:
                return kernel_shap_rows(groups, n, num_features, device, paired=paired)
            rows, weights = all_coalitions(num_features, device)
            exact_weights["weights"] = weights
            return rows.expand(groups, -1, -1)

        def weigh_exact_or_equal(perturber: CoalitionPerturber, rows: Tensor) -> Tensor:
            if "weights" in exact_weights:
                return exact_weights["weights"].expand(rows.shape[0], -1)
            return torch.ones(rows.shape[:2], dtype=torch.float64, device=rows.device)

        return self._attribute_on_engine(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                                         perturbations_per_eval, return_input_shape, show_progress,
                                         draw_exact_or_paired, weigh_exact_or_equal, solve=constrained_shapley_solve,
                                         background_id=background_id)

    def _check_num_features(self, num_features: int) -> None:
        if num_features < 2:
            raise AttributionInputError(f"KernelShap needs at least 2 features, got {num_features}")
        if self._exact is True and num_features > MAX_EXACT_FEATURES:
            raise AttributionInputError(f"exact=True enumerates 2**F coalitions and allows F <= "
                                        f"{MAX_EXACT_FEATURES}, got F = {num_features}")

    def _runs_on_engine(self) -> bool:
        """Captum's KernelShap sampling generator and similarity kernel, bound to this object."""
        perturb, similarity = self.perturb_func, self.similarity_func
        return (self.perturb_interpretable_space
                and self.from_interp_rep_transform is _captum_lime.default_from_interp_rep_transform
                and getattr(perturb, "__func__", None) is _CaptumKernelShap.kernel_shap_perturb_generator
                and getattr(perturb, "__self__", None) is self
                and getattr(similarity, "__func__", None) is _CaptumKernelShap.kernel_shap_similarity_kernel
                and getattr(similarity, "__self__", None) is self)
