"""Captum-compatible :class:`FeatureAblation` running on the perturbation engine."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional, Tuple, Union

import torch
from captum._utils.common import (_format_additional_forward_args, _format_feature_mask, _format_output,
                                  _is_tuple)
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import FeatureAblation as _CaptumFeatureAblation
from captum.attr._utils.common import _format_input_baseline
from captum.log import log_usage
from torch import Tensor
from torch.futures import Future

from .._validation import integral_feature_masks
from ._engine import coalition_evaluator
from ._errors import AttributionInputError
from ._evaluator import Evaluator
from ._features import FeatureMap, ids_present
from ._incremental import check_incremental, use_incremental
from ._perturbers import CoalitionPerturber

__all__ = ["FeatureAblation"]

logger = logging.getLogger(__name__)


class FeatureAblation(_CaptumFeatureAblation):
    """Drop-in for ``captum.attr.FeatureAblation`` (Captum 0.9), batched on the engine.

    Same constructor, same :meth:`attribute` arguments and defaults, same results: each feature
    (group of input elements sharing an id in ``feature_mask``; every scalar by default) is
    replaced by the baseline and credited with ``f(input) - f(input with the feature ablated)``.
    All ablations of a model call are built by one batched kernel per input tensor instead of one
    full-size mask per feature. A subclass of Captum's class, so ``isinstance`` checks keep
    working; :meth:`attribute_future` runs on the engine too.

    Differences (extensions): ``perturbations_per_eval="auto"`` picks the chunk from a memory
    budget and halves it on ``torch.OutOfMemoryError``; invalid masks/baselines, a model output
    that does not grow with the batch and NaN outputs raise :class:`AttributionInputError`
    (a ``ValueError`` that is also an ``AssertionError``) before or at the first evaluation;
    feature masks with fewer dims than their input are aligned to its trailing dims; negative ids
    are rejected. Integer and bool inputs are ablated in the dtype Captum gives them (an integer
    input with a float baseline becomes float, see :func:`promote_ablated_inputs`); floating
    inputs keep their dtype (Captum promotes them to a wider baseline's dtype).
    """

    def __init__(self, forward_func: Callable[..., Union[int, float, Tensor]]) -> None:
        super().__init__(forward_func)

    def attribute_future(self, *args: Any, **kwargs: Any) -> Future:  # type: ignore[override]
        """:meth:`attribute` for a ``forward_func`` returning ``torch.futures.Future`` (Captum's
        ``attribute_future``); see :func:`attribute_with_future_forward`."""
        return attribute_with_future_forward(self, *args, **kwargs)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        feature_mask: Union[None, Tensor, Tuple[Tensor, ...]] = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        background_id: Optional[int] = None,
        incremental: Union[bool, str, None] = None,
        **kwargs: Any,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Ablation attributions, as ``captum.attr.FeatureAblation.attribute``.

        Args:
            inputs: tensor or tuple of tensors, first dim ``N`` (examples).
            baselines: None (zeros), a number, a tensor broadcastable to the input, or a tuple of
                those (one per input tensor).
            target: Captum target: int, tuple, tensor, list or None (scalar output per example).
            additional_forward_args: extra arguments for ``forward_func`` (tensors are repeated
                along dim 0 per perturbation).
            feature_mask: integer tensor or tuple (one per input), broadcastable to the inputs;
                ids are shared across the tuple. None: every scalar is its own feature.
            perturbations_per_eval: ablations per model call (int >= 1) or ``"auto"``.
            show_progress: tqdm progress bar ("Feature Ablation attribution").
            background_id: a ``feature_mask`` id that is no feature: never ablated (no model
                call), attribution 0 there. None (default): every id is a feature, as Captum.
            incremental: True / ``"auto"``: recompute only each ablated feature's projective
                field (docs/incremental.md); report in ``self.last_incremental_report``. None
                (default): the patch policy's setting (``mmxai-fast run``: ``"auto"``), else False.
            **kwargs: accepted for compatibility with Captum, ignored.

        Returns:
            Attributions shaped ``[n_outputs, *inputs[i].shape[1:]]`` per input (``n_outputs =
            N`` for a scalar per example, the output's element count for a per-batch output), in
            the output's dtype; a tuple when ``inputs`` is a tuple.

        Raises:
            AttributionInputError: invalid arguments or model outputs (see the class docstring).
        """
        is_inputs_tuple = _is_tuple(inputs)
        formatted_inputs, baselines = _format_input_baseline(inputs, baselines)
        formatted_args = _format_additional_forward_args(additional_forward_args)
        formatted_mask = integral_feature_masks(_format_feature_mask(feature_mask, formatted_inputs))
        check_incremental(incremental)
        with torch.no_grad():
            evaluator, features = coalition_evaluator(self.forward_func, formatted_inputs, baselines, formatted_mask,
                                                      target, formatted_args, perturbations_per_eval,
                                                      compact_ids=True, background_id=background_id)
            promote_ablated_inputs(evaluator, baselines)
            self.last_incremental_report = use_incremental(evaluator, incremental, num_features=features.num_features)
            with evaluator.progress_bar(show_progress, f"{self.get_name()} attribution"):
                initial = evaluator.initialize()
                order = unskipped_feature_order(features, formatted_inputs, self._min_examples_per_batch_grouped,
                                                evaluator.rows_per_eval)
                table = ablate_one_feature_per_row(evaluator, features, initial, order)
        return _format_output(is_inputs_tuple, features.to_input_shapes(table))


def attribute_with_future_forward(attribution: Any, *args: Any, **kwargs: Any) -> Future:
    """Captum's ``attribute_future`` on the engine: ``forward_func`` must return a
    ``torch.futures.Future`` (else :class:`AttributionInputError`, an ``AssertionError`` as in
    Captum); each one is waited for and ``attribution.attribute(*args, **kwargs)`` runs as usual.
    Returns a completed Future of its result (the model calls do not overlap, the values are the
    same)."""
    forward = attribution.forward_func

    def waited_forward(*inputs: Any, **forward_kwargs: Any) -> Any:
        out = forward(*inputs, **forward_kwargs)
        if not isinstance(out, Future):
            raise AttributionInputError(
                f"forward_func must return a torch.futures.Future for attribute_future, got {type(out).__name__}")
        return out.wait()

    attribution.forward_func = waited_forward
    try:
        result = attribution.attribute(*args, **kwargs)
    finally:
        attribution.forward_func = forward
    done: Future = Future()
    done.set_result(result)
    return done.then(lambda fut: fut.value())  # a plain torch.Future, the type Captum returns


def ablated_dtype(x: Tensor, base: Any) -> torch.dtype:
    """The dtype of Captum 0.9's ablated input ``x * (1 - m) + base * m`` (``m`` cast to ``x``'s
    dtype; a tensor baseline carries a leading dim, so it promotes as a tensor, never as a scalar)."""
    if isinstance(base, Tensor):
        return torch.promote_types(x.dtype, base.dtype)
    return torch.result_type(torch.empty(1, dtype=x.dtype), base)


def promote_ablated_inputs(evaluator: Evaluator, baselines: Tuple[Any, ...]) -> None:
    """Integer / bool inputs whose baseline promotes them (``int`` input, ``0.2`` baseline) are
    perturbed in the promoted dtype, as Captum does: the model sees ``0.2``, not ``0``. Captum
    promotes only the tensors holding a feature of the current chunk; here every perturbed copy
    of such an input is promoted (the unperturbed first call keeps the input's dtype, as Captum)."""
    perturber = evaluator.perturber
    if not isinstance(perturber, CoalitionPerturber):
        return
    promoted = tuple(x.to(ablated_dtype(x, base)) if not x.is_floating_point() and not x.is_complex() else x
                     for x, base in zip(perturber.inputs, baselines))
    perturber.inputs = promoted


def unskipped_feature_order(features: FeatureMap, inputs: Tuple[Tensor, ...], min_examples: Optional[int],
                            rows_per_eval: int) -> Tensor:
    """Captum's visiting order less the chunks Captum skips: with ``min_examples`` set
    (``_min_examples_per_batch_grouped``; FeaturePermutation: 2), a chunk of ``rows_per_eval``
    features is skipped whole (attribution 0, no model call, no draw) when one of its features
    lives in an input tensor with fewer than ``min_examples`` rows (dim 0)."""
    order = features.feature_order
    if min_examples is None:
        return order
    small = torch.zeros(features.num_features + 1, dtype=torch.bool)
    for x, mask in zip(inputs, features.masks):
        if x.shape[0] < min_examples and x.numel() and mask.numel():
            small[ids_present(mask)] = True
    kept = []
    for chunk in order.split(rows_per_eval):
        if bool(small[chunk].any()):
            logger.warning(f"Skipping feature group {features.feature_ids[chunk].tolist()} since it contains at "
                           f"least one input tensor with 0th dim less than {min_examples}")
        else:
            kept.append(chunk)
    return torch.cat(kept) if kept else order[:0]


def ablate_one_feature_per_row(evaluator: Evaluator, features: FeatureMap, initial: Tensor,
                               order: Optional[Tensor] = None) -> Tensor:
    """One row per feature of ``order`` (default: all, in Captum's visiting order) with only that
    feature removed; returns the ``[F, n_outputs]`` table ``initial - output with the feature
    removed`` (0 for features not in ``order``)."""
    order = features.feature_order if order is None else order
    num_rows, num_features = order.numel(), features.num_features
    evaluator.set_progress_total(math.ceil(num_rows / evaluator.rows_per_eval) + 1)
    order_dev = order.to(evaluator.inputs[0].device)

    def make_keep(start: int, stop: int) -> Tensor:
        keep = torch.ones((stop - start, num_features), dtype=torch.bool, device=order_dev.device)
        keep[torch.arange(stop - start, device=order_dev.device), order_dev[start:stop]] = False
        return keep

    outputs = evaluator.run(num_rows, make_keep)
    flat_initial = initial.reshape(1, -1)
    diff = flat_initial - outputs.reshape(num_rows, flat_initial.shape[1]).to(flat_initial.device)
    table = torch.zeros((num_features, flat_initial.shape[1]), dtype=flat_initial.dtype, device=flat_initial.device)
    table[order.to(table.device)] = diff.to(table.dtype)
    return table
