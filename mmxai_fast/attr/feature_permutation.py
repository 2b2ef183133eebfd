"""Captum-compatible :class:`FeaturePermutation` running on the perturbation engine.

Permutation feature importance (Breiman 2001; Fisher, Rudin & Dominici 2019): feature ``f`` is
credited with ``f(batch) - f(batch with feature f shuffled among the N examples)``. Each
coalition row drops one feature; instead of the baseline, the dropped feature's elements take
the values of the shuffled examples (:class:`ShufflePerturber`). Only those elements are written
(a gather and a copy per row at the feature's positions, from a feature -> positions map sorted
once per call, into the evaluator's buffer, which keeps the input between model calls), so the work outside the
model scales with the features' sizes, not with ``rows * volume`` per model call.
"""
from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.common import (_format_additional_forward_args, _format_feature_mask, _format_output,
                                  _format_tensor_into_tuples, _is_tuple)
from captum._utils.typing import TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import FeaturePermutation as _CaptumFeaturePermutation
from captum.attr._core.feature_permutation import _permute_feature
from captum.log import log_usage
from torch import Tensor

from .._validation import check_inputs, integral_feature_masks
from ._errors import AttributionInputError
from ._evaluator import Evaluator, check_perturbations_per_eval
from ._features import FeatureMap
from .feature_ablation import FeatureAblation, ablate_one_feature_per_row, unskipped_feature_order

__all__ = ["FeaturePermutation"]

logger = logging.getLogger(__name__)


@dataclass
class _FeaturePositions:
    """Where each feature lives in one input tensor ``x`` ``[N, *S]`` (``size = prod(S)``).

    The mask, expanded to ``[m, *S]`` (``m``: its first dim, 1 or ``N``), is sorted once by id:
    the flat indices (in ``[m * size]``) of feature ``f`` are ``positions[start:stop]`` with
    ``start, stop = bounds[f], bounds[f + 1]``.
    """

    positions: Tensor
    bounds: List[int]
    counts: Tensor
    per_example: bool  # m == N > 1: the positions carry their example (index // size)
    size: int


@dataclass
class _BufferState:
    """The engine's buffer for one input holds ``x`` on its first ``clean_rows`` rows except for
    feature ``written[r]`` in row ``r``, as long as nobody wrote to it since (version ``version``)."""

    buffer: "weakref.ref[Tensor]"
    clean_rows: int
    written: List[int]
    version: Optional[int]


def _version(t: Tensor) -> Optional[int]:
    try:
        return t._version
    except RuntimeError:  # inference tensors have no version counter: never trusted as clean
        return None


class ShufflePerturber:
    """Coalition rows that each drop exactly one feature -> inputs whose dropped feature takes
    the values of shuffled examples instead of the baseline.

    :attr:`permutations` holds one ``(F, N_t)`` int64 table per input tensor (on its device):
    row ``f`` is the permutation of the examples used for feature ``f`` in that tensor.

    A chunk's perturbed batch is ``x`` repeated per row with only the dropped feature's elements
    rewritten (gathered from the shuffled examples at the positions of
    :class:`_FeaturePositions`), so a chunk costs O(size of its features), not O(rows * volume):
    in the evaluator's buffer ``x`` stays between chunks and only the previous chunk's writes are
    undone. A model that writes to its input (bumping the buffer's version counter) gets a full
    refill instead.
    """

    def __init__(self, inputs: Tuple[Tensor, ...], masks: Tuple[Tensor, ...], num_features: int) -> None:
        self.inputs, self.masks, self.num_features = inputs, masks, num_features
        self.permutations: List[Tensor] = []
        self._positions: Optional[List[_FeaturePositions]] = None
        self._states: Dict[int, _BufferState] = {}
        self._contiguous = [x.contiguous() for x in inputs]

    def feature_positions(self) -> List[_FeaturePositions]:
        """The per-input position maps, built on first use (one sort of each mask)."""
        if self._positions is None:
            self._positions = [self._index_mask(x, mask) for x, mask in zip(self.inputs, self.masks)]
        return self._positions

    def _index_mask(self, x: Tensor, mask: Tensor) -> _FeaturePositions:
        size = math.prod(x.shape[1:])
        m = mask.shape[0] if x.numel() else 0
        ids = mask.expand((m,) + tuple(x.shape[1:])).reshape(-1)
        counts = torch.bincount(ids, minlength=self.num_features)
        small = torch.int16 if self.num_features <= torch.iinfo(torch.int16).max else torch.int32
        positions = torch.argsort(ids.to(small))  # a narrower key sorts faster; order within a feature is free
        bounds = [0] + torch.cumsum(counts, 0).tolist()
        return _FeaturePositions(positions, bounds, counts, m > 1, size)

    def release(self) -> None:
        """The evaluator dropped its buffers: nothing is known about them any more."""
        self._states.clear()

    def _copy_feature(self, t: int, out_row: Tensor, feature: int, shuffled: bool) -> None:
        """Write feature ``feature``'s elements of ``out_row`` ``[N, *S]`` (contiguous): from the
        examples permuted by ``permutations[t][feature]`` if ``shuffled``, else from ``x``."""
        where = self.feature_positions()[t]
        start, stop = where.bounds[feature], where.bounds[feature + 1]
        if start == stop:
            return
        x = self._contiguous[t]
        flat = where.positions[start:stop]
        if where.per_example:  # flat indices in [N * size]
            src = flat
            if shuffled:
                example = torch.div(flat, where.size, rounding_mode="floor")
                src = flat + (self.permutations[t][feature].index_select(0, example) - example) * where.size
            out_row.view(-1).index_copy_(0, flat, x.view(-1).index_select(0, src))
            return
        rows_of_x = x.view(x.shape[0], -1)
        values = rows_of_x.index_select(1, flat)  # [N, count]
        if shuffled:
            values = values.index_select(0, self.permutations[t][feature])
        out_row.view(x.shape[0], -1).index_copy_(1, flat, values)

    def _fill(self, t: int, dropped: List[int], buffer: Optional[Callable[[int, int], Tensor]]) -> Tensor:
        """``[rows, *x.shape]`` perturbed copies of input ``t``: in the evaluator's reused buffer
        when given (undoing only the previous chunk's writes), freshly allocated otherwise."""
        x = self._contiguous[t]
        rows = len(dropped)
        if buffer is None:
            out = x.unsqueeze(0).expand((rows,) + tuple(x.shape)).contiguous()
        else:
            out = buffer(t, rows)
            base = out if out._base is None else out._base
            state = self._states.get(t)
            if state is None or state.buffer() is not base or state.version is None or state.version != _version(base):
                out.copy_(x.unsqueeze(0).expand_as(out))
                clean_rows = rows
            else:
                for r, feature in enumerate(state.written):
                    self._copy_feature(t, base[r], feature, shuffled=False)
                clean_rows = state.clean_rows
                if rows > clean_rows:
                    out[clean_rows:].copy_(x.unsqueeze(0).expand_as(out[clean_rows:]))
                    clean_rows = rows
        for r, feature in enumerate(dropped):
            self._copy_feature(t, out[r], feature, shuffled=True)
        if buffer is not None:
            self._states[t] = _BufferState(weakref.ref(base), clean_rows, dropped, _version(base))
        return out

    def __call__(self, keep: Tensor, buffer: Optional[Callable[[int, int], Tensor]] = None) -> Tuple[Tensor, ...]:
        rows = keep.shape[0]
        dropped = (~keep).to(torch.uint8).argmax(dim=1).tolist()
        return tuple(self._fill(t, dropped, buffer).reshape((rows * x.shape[0],) + tuple(x.shape[1:]))
                     for t, x in enumerate(self.inputs))


def _draw_permutations(perturber: ShufflePerturber, feature_order: Tensor, rows_per_eval: int) -> List[Tensor]:
    """Permutations drawn exactly as Captum 0.9 draws them, so the same torch seed gives the same
    shuffles: features visited in chunks of ``rows_per_eval``; for every input tensor that holds
    a feature of the chunk (ascending), one ``torch.randperm(n_t)`` per feature of the chunk
    (``n_t``: that tensor's own dim 0, which differs from ``N`` for sparse list inputs; redrawn
    while it is the identity), on the default CPU generator.

    Which tensors hold which features comes from the perturber's position maps (no ``unique``
    over the masks).
    """
    num_features = perturber.num_features
    sizes = [x.shape[0] for x in perturber.inputs]  # each tensor is shuffled over its own dim 0 (sparse lists)
    present = torch.stack([where.counts.cpu() > 0 for where in perturber.feature_positions()])
    for t, n in enumerate(sizes):
        if n < 2 and bool(present[t, feature_order.cpu()].any()):
            raise AttributionInputError(
                f"cannot permute features of inputs[{t}]: it holds features but has {n} row(s) to shuffle "
                f"(dim 0 must be >= 2)")
    tables = [torch.arange(n).repeat(num_features, 1) for n in sizes]
    identities = [torch.arange(n) for n in sizes]
    order = feature_order.tolist()
    for start in range(0, len(order), rows_per_eval):
        chunk = order[start:start + rows_per_eval]
        touched = present[:, chunk].any(dim=1).nonzero().flatten().tolist()
        for t in touched:
            table, n, identity = tables[t], sizes[t], identities[t]
            for f in chunk:
                perm = torch.randperm(n)
                while torch.equal(perm, identity):
                    perm = torch.randperm(n)
                table[f] = perm
    return [table.to(x.device) for table, x in zip(tables, perturber.inputs)]


class FeaturePermutation(FeatureAblation, _CaptumFeaturePermutation):
    """Drop-in for ``captum.attr.FeaturePermutation`` (Captum 0.9), batched on the engine.

    Same constructor and :meth:`attribute` arguments; with the default ``perm_func`` the same
    permutations as Captum (same draw order on the default CPU generator), hence the same
    attributions at the same torch seed. Each feature (group of elements sharing an id in
    ``feature_mask``, shared across the input tuple; every scalar by default) is shuffled among
    the ``N`` examples of the batch and credited with ``f(inputs) - f(shuffled inputs)``. A feature
    spanning several input tensors gets one permutation per tensor, like Captum. A subclass of
    Captum's class and of :class:`~mmxai_fast.attr.FeatureAblation` (Captum's hierarchy).

    A custom ``perm_func`` (any callable other than Captum's default) cannot be batched: the call
    runs Captum's own implementation (``perturbations_per_eval="auto"`` is read as 1 there).

    Differences (extensions): ``perturbations_per_eval="auto"``; invalid masks, outputs that do
    not grow with the batch and NaN outputs raise :class:`AttributionInputError` at the latest at
    the first model call. Like Captum, a chunk of ``perturbations_per_eval`` features is skipped
    (attribution 0, one logged warning) when one of them lives in an input tensor with fewer than
    ``_min_examples_per_batch_grouped`` (2) rows: with ``N == 1`` nothing can be shuffled.
    Floating masks of whole numbers are accepted (as int64), as in Captum.
    """

    def __init__(
        self,
        forward_func: Callable[..., Union[int, float, Tensor]],
        perm_func: Callable[[Tensor, Tensor], Tensor] = _permute_feature,
    ) -> None:
        _CaptumFeaturePermutation.__init__(self, forward_func, perm_func)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        feature_mask: Union[None, TensorOrTupleOfTensorsGeneric] = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        **kwargs: Any,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Permutation importances, as ``captum.attr.FeaturePermutation.attribute``.

        Args:
            inputs: tensor or tuple of tensors, first dim ``N >= 2`` (the batch to shuffle).
            target: Captum target: int, tuple, tensor, list or None.
            additional_forward_args: extra arguments for ``forward_func``.
            feature_mask: integer tensor or tuple (one per input), broadcastable to the inputs;
                ids shared across the tuple. None: every scalar is its own feature.
            perturbations_per_eval: permuted features per model call (int >= 1) or ``"auto"``.
            show_progress: tqdm progress bar ("Feature Permutation attribution").
            background_id: (keyword, in ``kwargs`` to keep Captum's signature) a ``feature_mask``
                id that is no feature: never shuffled (no model calls), attribution 0. None
                (default): Captum's semantics.
            **kwargs: accepted for compatibility with Captum (``baselines`` is dropped), ignored.

        Returns:
            Attributions shaped ``[n_outputs, *inputs[i].shape[1:]]`` per input (``n_outputs = N``
            for a scalar per example, 1 for a scalar per batch), in the output's dtype; a tuple
            when ``inputs`` is a tuple.

        Raises:
            AttributionInputError: invalid arguments or model outputs.
        """
        kwargs.pop("baselines", None)
        background_id = kwargs.pop("background_id", None)
        check_perturbations_per_eval(perturbations_per_eval)
        if self.perm_func is not _permute_feature:
            return _CaptumFeaturePermutation.attribute(
                self, inputs, target=target, additional_forward_args=additional_forward_args,
                feature_mask=feature_mask,
                perturbations_per_eval=1 if perturbations_per_eval == "auto" else perturbations_per_eval,
                show_progress=show_progress, **kwargs)
        is_inputs_tuple = _is_tuple(inputs)
        formatted_inputs = check_inputs(_format_tensor_into_tuples(inputs))
        formatted_args = _format_additional_forward_args(additional_forward_args)
        features = FeatureMap(integral_feature_masks(_format_feature_mask(feature_mask, formatted_inputs)), formatted_inputs,
                              compact_ids=True, background_id=background_id)
        perturber = ShufflePerturber(formatted_inputs, features.masks, features.num_columns)
        with torch.no_grad():
            evaluator = Evaluator(self.forward_func, formatted_inputs, perturber, target, formatted_args,
                                  perturbations_per_eval, check_batch_output=features.require_shared)
            with evaluator.progress_bar(show_progress, f"{self.get_name()} attribution"):
                initial = evaluator.initialize()
                order = unskipped_feature_order(features, formatted_inputs, self._min_examples_per_batch_grouped,
                                                evaluator.rows_per_eval)
                if not order.numel():  # every group skipped: zeros, whatever the masks' shapes (as Captum)
                    evaluator.set_progress_total(1)
                    return _format_output(is_inputs_tuple, tuple(
                        torch.zeros((initial.numel(),) + tuple(x.shape[1:]), dtype=initial.dtype, device=x.device)
                        for x in formatted_inputs))
                perturber.permutations = _draw_permutations(perturber, order, evaluator.rows_per_eval)
                table = ablate_one_feature_per_row(evaluator, features, initial, order)
        return _format_output(is_inputs_tuple, features.to_input_shapes(table))
