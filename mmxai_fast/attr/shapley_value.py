"""Captum-compatible :class:`ShapleyValueSampling` and :class:`ShapleyValues` on the engine.

The permutation walk (baseline, then the features of each permutation added one at a time) is
evaluated in chunks of coalition rows that may span permutations: the keep rows come from
:func:`mmxai_fast.ops.shapley_coalitions`, the marginals are summed per feature on the device
by :func:`mmxai_fast.ops.shapley_accumulate` (float64 running sums and sums of squares), and
the baseline and the full input are evaluated once per call rather than once per permutation.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Any, Callable, Iterator, Optional, Tuple, Union

import torch
from captum._utils.common import (_format_additional_forward_args, _format_feature_mask, _format_output,
                                  _format_tensor_into_tuples, _is_tuple)
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import ShapleyValues as _CaptumShapleyValues
from captum.attr import ShapleyValueSampling as _CaptumShapleyValueSampling
from captum.attr._core.shapley_value import _perm_generator as _captum_perm_generator
from captum.attr._utils.common import _format_input_baseline
from captum.log import log_usage
from torch import Tensor
from torch.futures import Future

from .._validation import check_dense, int_at_least
from ..ops.shapley import shapley_accumulate, shapley_coalitions, shapley_prefix_rows, shapley_stats
from ._engine import AttributionInputError, coalition_evaluator, check_perturbations_per_eval
from ._evaluator import Evaluator
from ._features import FeatureMap, randperm_generator, stack_permutations
from ._incremental import check_incremental, step_major, use_incremental
from .feature_ablation import attribute_with_future_forward

__all__ = ["ShapleyValueSampling", "ShapleyValues"]

_MISSING_IDS_WARNING = ("Feature mask is missing some integers between 0 and num_features, for optimal "
                        "performance, make sure each consecutive integer corresponds to a feature.")


def _positive_int(value: Any, name: str) -> int:
    return int_at_least(value, name, 1, AttributionInputError)


def _positive_float(value: Any, name: str) -> Optional[float]:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise AttributionInputError(f"{name} must be a positive number or None, got {value!r}")
    return float(value)


class ShapleyValueSampling(_CaptumShapleyValueSampling):
    """Drop-in for ``captum.attr.ShapleyValueSampling`` (Captum 0.9), batched on the engine.

    Same constructor, same :meth:`attribute` arguments and defaults, and the same permutations:
    ``self.permutation_generator(num_features, n_samples)`` (Captum's, i.e. one
    ``torch.randperm(num_features)`` per sample), so with the same torch seed the result equals
    Captum's up to float32 rounding. A subclass of Captum's class.

    Opt-in extensions (keyword-only; the defaults keep Captum's behaviour):

    - ``antithetic=True``: each drawn permutation is also walked in reverse (``n_samples``
      counts both, so it must be even); a variance reduction at equal model evaluations.
    - ``target_stderr`` / ``target_relative_stderr`` with ``max_samples``: sample in rounds of
      ``n_samples`` permutations until every attribution's standard error is at most
      ``target_stderr`` (absolute) and/or at most ``target_relative_stderr`` times the largest
      absolute attribution of the same output element (relative), or ``max_samples``
      permutations were used (default ``10 * n_samples``).

    After :meth:`attribute`, ``self.last_stderr`` holds the standard errors of the attributions
    (same shapes and format; ``inf`` with a single permutation; with ``antithetic`` computed over
    the pair means) and ``self.last_n_samples`` the number of permutations used.

    Other differences: ``perturbations_per_eval="auto"``; chunks span permutations; invalid
    arguments and NaN outputs raise :class:`AttributionInputError` (a ``ValueError`` that is also
    an ``AssertionError``).
    """

    def __init__(self, forward_func: Callable[..., Union[int, float, Tensor]]) -> None:
        super().__init__(forward_func)
        self.last_stderr: Optional[TensorOrTupleOfTensorsGeneric] = None
        self.last_n_samples: Optional[int] = None

    def attribute_future(self, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        """:meth:`attribute` for a ``forward_func`` returning Futures (Captum's ``attribute_future``),
        on the engine: see :func:`mmxai_fast.attr.feature_ablation.attribute_with_future_forward`."""
        return attribute_with_future_forward(self, *args, **kwargs)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Optional[Tuple[object, ...]] = None,
        feature_mask: Union[None, TensorOrTupleOfTensorsGeneric] = None,
        n_samples: int = 25,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        antithetic: bool = False,
        target_stderr: Optional[float] = None,
        target_relative_stderr: Optional[float] = None,
        max_samples: Optional[int] = None,
        background_id: Optional[int] = None,
        incremental: Union[bool, str, None] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Shapley value estimates, as ``captum.attr.ShapleyValueSampling.attribute``.

        Args:
            inputs: tensor or tuple of tensors, first dim ``N`` (examples).
            baselines: None (zeros), a number, a tensor broadcastable to the input, or a tuple.
            target: Captum target (int, tuple, tensor, list or None).
            additional_forward_args: extra arguments for ``forward_func``.
            feature_mask: integer tensor or tuple, broadcastable to the inputs, ids ``0 .. F - 1``
                shared across the tuple; None: every scalar is a feature.
            n_samples: permutations (with a stopping rule: per round).
            perturbations_per_eval: coalitions per model call (int >= 1) or ``"auto"``.
            show_progress: tqdm progress bar ("Shapley Value Sampling attribution").
            antithetic: also walk every permutation reversed (``n_samples`` must be even).
            target_stderr: stop once every standard error is at most this.
            target_relative_stderr: stop once every standard error is at most this times the
                largest absolute attribution of its output element.
            max_samples: cap on permutations with a stopping rule (default ``10 * n_samples``).
            background_id: a ``feature_mask`` id that is no feature: always kept, never in a
                permutation (fewer model calls), attribution 0 there. None: Captum's semantics.
            incremental: True / ``"auto"``: each step recomputes only the added feature's
                projective field from the previous step's activations (docs/incremental.md);
                report in ``self.last_incremental_report``. None (default): the patch
                policy's setting (``mmxai-fast run``: ``"auto"``), else False.

        Returns:
            float32 attributions shaped ``[*output_shape, *inputs[i].shape[1:]]`` per input
            (``output_shape`` is the model's output shape on the baseline, a scalar read as
            ``(1,)``); a tuple when ``inputs`` is a tuple.

        Raises:
            AttributionInputError: invalid arguments or model outputs.
        """
        is_inputs_tuple = _is_tuple(inputs)
        inputs_tuple, baselines = _format_input_baseline(inputs, baselines)
        formatted_args = _format_additional_forward_args(additional_forward_args)
        formatted_mask = _format_feature_mask(feature_mask, inputs_tuple)
        check_perturbations_per_eval(perturbations_per_eval)
        check_incremental(incremental)
        plan = self._sampling_plan(n_samples, antithetic, target_stderr, target_relative_stderr, max_samples)
        with torch.no_grad():
            evaluator, features = coalition_evaluator(self.forward_func, inputs_tuple, baselines, formatted_mask,
                                                      target, formatted_args, perturbations_per_eval,
                                                      compact_ids=True, background_id=background_id)
            self.last_incremental_report = use_incremental(evaluator, incremental, num_features=features.num_features,
                                                           reference_keep=False)
            self._perm_width, self._perm_lookup = self._permutation_space(features)
            with evaluator.progress_bar(show_progress, f"{self.get_name()} attribution"):
                mean, stderr, count = self._walk(evaluator, features.num_features, plan)
            attributions = features.to_input_shapes(mean.float())
            self.last_stderr = _format_output(is_inputs_tuple, features.to_input_shapes(stderr.float()))
            self.last_n_samples = count
        return _format_output(is_inputs_tuple, attributions)

    # ------------------------------------------------------------------ planning

    def _sampling_plan(self, n_samples, antithetic, target_stderr, target_relative_stderr, max_samples):
        _positive_int(n_samples, "n_samples")
        if antithetic and n_samples % 2:
            raise AttributionInputError(f"n_samples must be even with antithetic=True, got {n_samples}")
        target_stderr = _positive_float(target_stderr, "target_stderr")
        target_relative_stderr = _positive_float(target_relative_stderr, "target_relative_stderr")
        adaptive = target_stderr is not None or target_relative_stderr is not None
        if max_samples is not None:
            if not adaptive:
                raise AttributionInputError(
                    "max_samples needs a stopping rule (target_stderr or target_relative_stderr)")
            _positive_int(max_samples, "max_samples")
            if max_samples < n_samples:
                raise AttributionInputError(f"max_samples must be >= n_samples ({n_samples}), got {max_samples}")
        elif adaptive:
            max_samples = 10 * n_samples
        return dict(n_samples=n_samples, antithetic=bool(antithetic), target_stderr=target_stderr,
                    target_relative_stderr=target_relative_stderr, adaptive=adaptive,
                    max_samples=max_samples)

    def _num_permutations(self, num_features: int, n_samples: int) -> int:
        """Permutations the generator yields (``n_samples``; ``F!`` for exact Shapley values)."""
        return n_samples

    def _permutation_space(self, features: FeatureMap):
        """Captum's permutation width and the lookup to compact columns (absent ids dropped)."""
        width, lookup = features.permutation_space(self.get_name())
        if lookup is not None:
            warnings.warn(_MISSING_IDS_WARNING, stacklevel=4)
        return width, lookup

    def _rounds(self, num_features: int, plan) -> Iterator[Tensor]:
        """Yield ``[P, F]`` int64 permutation blocks, drawn lazily from the generator."""
        per_draw = 2 if plan["antithetic"] else 1
        total = self._num_permutations(num_features, plan["max_samples"] or plan["n_samples"])
        generator = self.permutation_generator
        if generator is _captum_perm_generator:  # the same draws, without F Python ints each
            generator = randperm_generator
        draws = iter(generator(self._perm_width, total // per_draw))
        while True:
            block = list(itertools.islice(draws, plan["n_samples"] // per_draw))
            if not block:
                return
            perms = stack_permutations(block, self._perm_lookup)
            if plan["antithetic"]:
                perms = torch.stack((perms, perms.flip(1)), dim=1).reshape(-1, num_features)
            yield perms

    # ------------------------------------------------------------------ the walk

    def _walk(self, evaluator: Evaluator, num_features: int, plan) -> Tuple[Tensor, Tensor, int]:
        """Walk the permutations in rounds; returns (mean, stderr, permutations used). The
        baseline and the full input are evaluated once; the prefixes ``1 .. F - 1`` of every
        permutation of a round are evaluated in chunks that may span permutations."""
        device = evaluator.inputs[0].device
        base = evaluator.initialize(torch.zeros((1, num_features), dtype=torch.bool, device=device))
        output_shape = tuple(base.shape) or (1,)
        full = evaluator.run(1, lambda a, b: torch.ones((1, num_features), dtype=torch.bool, device=device))
        perms_total = self._num_permutations(num_features, plan["max_samples"] or plan["n_samples"])
        evaluator.set_progress_total(2 + math.ceil(perms_total * (num_features - 1) / evaluator.rows_per_eval))
        dtype = base.dtype if base.is_floating_point() else torch.float64
        base = base.reshape(output_shape).to(dtype)
        full = full.reshape(output_shape).to(dtype)
        out_device = base.device
        sums = torch.zeros((num_features,) + output_shape, dtype=torch.float64, device=out_device)
        sumsq = torch.zeros_like(sums)
        units = count = 0
        for perms in self._rounds(num_features, plan):
            num_perms = perms.shape[0]
            perms_dev = perms.to(device)
            parts = [base.expand((num_perms, 1) + output_shape)]
            if num_features > 1:
                perm_index, prefix_size = shapley_prefix_rows(num_perms, num_features, include_empty=False,
                                                              include_full=False, device=device)
                perm_index, prefix_size, restore = step_major(evaluator, perm_index, prefix_size, num_perms)
                middle = evaluator.run(perm_index.numel(), lambda a, b: shapley_coalitions(
                    perms_dev, perm_index[a:b], prefix_size[a:b]))[restore]
                parts.append(middle.reshape((num_perms, num_features - 1) + output_shape).to(base))
            parts.append(full.expand((num_perms, 1) + output_shape))
            outputs = torch.cat(parts, dim=1)  # [P, F + 1, *T]: prefixes 0 .. F of every permutation
            if plan["antithetic"]:
                self._accumulate_pairs(outputs, perms.to(out_device), sums, sumsq)
                units += num_perms // 2
            else:
                shapley_accumulate(outputs, perms.to(out_device), sums, sumsq)
                units += num_perms
            count += num_perms
            if plan["adaptive"]:
                if count >= plan["max_samples"]:
                    break
                if units >= 2 and self._converged(*shapley_stats(sums, sumsq, units), plan):
                    break
        if count == 0:
            raise AttributionInputError("permutation_generator yielded no permutations")
        mean, stderr = shapley_stats(sums, sumsq, units)
        return mean, stderr, count

    @staticmethod
    def _accumulate_pairs(outputs: Tensor, perms: Tensor, sums: Tensor, sumsq: Tensor) -> None:
        """Antithetic pairs: accumulate the pair-mean marginals (one sample per pair)."""
        num_perms, num_features = perms.shape
        values = outputs.to(torch.float64)
        marginals = values[:, 1:] - values[:, :-1]  # [P, F, *T], by position in the walk
        ranks = perms.argsort(dim=1)
        index = ranks.reshape((num_perms, num_features) + (1,) * (marginals.dim() - 2)).expand_as(marginals)
        per_feature = torch.gather(marginals, 1, index)
        pairs = per_feature.reshape((num_perms // 2, 2) + tuple(per_feature.shape[1:])).mean(dim=1)
        sums += pairs.sum(dim=0)
        sumsq += (pairs * pairs).sum(dim=0)

    @staticmethod
    def _converged(mean: Tensor, stderr: Tensor, plan) -> bool:
        ok = True
        if plan["target_stderr"] is not None:
            ok = ok and bool((stderr <= plan["target_stderr"]).all())
        if plan["target_relative_stderr"] is not None:
            scale = mean.abs().amax(dim=0, keepdim=True)
            ok = ok and bool((stderr <= plan["target_relative_stderr"] * scale).all())
        return ok


class ShapleyValues(ShapleyValueSampling, _CaptumShapleyValues):
    """Drop-in for ``captum.attr.ShapleyValues``: exact Shapley values over all ``F!``
    permutations (Captum's class and generator), evaluated in batched chunks on the engine.
    Only sensible for a handful of features (Captum warns from 10 on; so does this class)."""

    def __init__(self, forward_func: Callable[..., Union[int, float, Tensor]]) -> None:
        ShapleyValueSampling.__init__(self, forward_func)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        feature_mask: Union[None, TensorOrTupleOfTensorsGeneric] = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Exact Shapley values; arguments as :meth:`ShapleyValueSampling.attribute`."""
        check_dense(inputs, "inputs")
        check_dense(feature_mask, "feature_mask")
        if feature_mask is None:
            total_features = sum(torch.numel(inp[0]) for inp in _format_tensor_into_tuples(inputs))
        else:
            total_features = int(max(torch.max(m).item() for m in _format_tensor_into_tuples(feature_mask))) + 1
        if total_features >= 10:
            warnings.warn("You are attempting to compute Shapley Values with at least 10 features, which will "
                          "likely be very computationally expensive.Consider using Shapley Value Sampling "
                          "instead.", stacklevel=2)
        # n_samples only sets the round size here: the generator yields all F! permutations.
        return ShapleyValueSampling.attribute(
            self, inputs, baselines=baselines, target=target, additional_forward_args=additional_forward_args,
            feature_mask=feature_mask, n_samples=math.factorial(min(total_features, 6)),
            perturbations_per_eval=perturbations_per_eval, show_progress=show_progress)

    def _num_permutations(self, num_features: int, n_samples: int) -> int:
        return math.factorial(num_features)

    def _permutation_space(self, features: FeatureMap):
        """All permutations of the ids present: absent ids are null players (Shapley value 0,
        no effect on the others), so this is Captum's result without ``(max id + 1)!`` walks."""
        width, lookup = features.num_features, None
        if features.num_features < features.max_id + 1 - int(features.has_background):
            warnings.warn(_MISSING_IDS_WARNING, stacklevel=4)
        return width, lookup
