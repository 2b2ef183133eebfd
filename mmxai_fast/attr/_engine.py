"""Coalition evaluation over feature masks: :func:`coalition_evaluator` and the
:class:`PerturbationEngine` convenience class.

A **coalition row** ``keep[r, f]`` (True: feature ``f`` from the input, False: from the
baseline) describes one perturbed copy of the inputs. :func:`coalition_evaluator` validates
inputs, baselines and masks once (:mod:`~mmxai_fast._validation`), numbers the features
(:class:`~mmxai_fast.attr._features.FeatureMap`) and returns an
:class:`~mmxai_fast.attr._evaluator.Evaluator` whose rows are coalition rows
(:class:`~mmxai_fast.attr._perturbers.CoalitionPerturber`).

:class:`PerturbationEngine` bundles the two for callers outside the attribution classes (e.g.
:mod:`mmxai_fast.modality.censorship`)::

    engine = PerturbationEngine(forward_func, inputs, baselines, feature_mask, target,
                                additional_forward_args, perturbations_per_eval, compact_ids=True)
    ref = engine.initialize()              # unperturbed inputs (or initialize(keep_row))
    out = engine.evaluate(keep)            # keep: [R, F] bool -> [R, *engine.row_shape]
    attrs = engine.to_input_shapes(table)  # table: [F, *T] -> tuple of [*T, *inp.shape[1:]]
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Tuple, Union

import torch
from torch import Tensor

from .._validation import check_baselines, check_inputs
from ._errors import AttributionInputError
from ._evaluator import Evaluator, check_perturbations_per_eval
from ._features import FeatureMap, ids_present
from ._perturbers import CoalitionPerturber

__all__ = ["AttributionInputError", "PerturbationEngine", "coalition_evaluator", "check_perturbations_per_eval",
           "ids_present"]


def coalition_evaluator(forward_func: Callable, inputs: Tuple[Tensor, ...], baselines: Tuple[Any, ...],
                        feature_mask: Tuple[Tensor, ...], target: Any = None,
                        additional_forward_args: Optional[Tuple[Any, ...]] = None,
                        perturbations_per_eval: Union[int, str] = 1, *, compact_ids: bool,
                        num_features: Optional[int] = None, shared_masks_per_batch: bool = True,
                        background_id: Optional[int] = None) -> Tuple[Evaluator, FeatureMap]:
    """Validate, number the features and build the evaluator of coalition rows ``[rows, F]``.

    ``shared_masks_per_batch``: a scalar-per-batch model needs masks with first dim 1 (off for
    Lime's per-example ids). ``num_features``: row width when wider than the ids present.
    ``background_id``: a mask id that is no feature (never removed, attribution 0).
    """
    inputs, perturber, features = _coalition_parts(inputs, baselines, feature_mask, perturbations_per_eval,
                                                   compact_ids, num_features, background_id)
    evaluator = Evaluator(forward_func, inputs, perturber, target, additional_forward_args, perturbations_per_eval,
                          check_batch_output=features.require_shared if shared_masks_per_batch else None)
    return evaluator, features


def _coalition_parts(inputs, baselines, feature_mask, perturbations_per_eval, compact_ids, num_features=None,
                     background_id=None):
    check_perturbations_per_eval(perturbations_per_eval)
    inputs = check_inputs(inputs)
    baselines = check_baselines(baselines, inputs)
    features = FeatureMap(feature_mask, inputs, compact_ids=compact_ids, num_features=num_features,
                          background_id=background_id)
    return inputs, CoalitionPerturber(inputs, baselines, features.masks, features.has_background), features


class PerturbationEngine(Evaluator):
    """An :class:`Evaluator` of coalition rows with its :class:`FeatureMap` (module docstring).

    Raises:
        AttributionInputError: any invalid argument (message names it).
    """

    def __init__(self, forward_func: Callable, inputs: Tuple[Tensor, ...], baselines: Tuple[Any, ...],
                 feature_mask: Tuple[Tensor, ...], target: Any = None,
                 additional_forward_args: Optional[Tuple[Any, ...]] = None,
                 perturbations_per_eval: Union[int, str] = 1, *, compact_ids: bool = False) -> None:
        inputs, perturber, features = _coalition_parts(inputs, baselines, feature_mask, perturbations_per_eval,
                                                       compact_ids)
        super().__init__(forward_func, inputs, perturber, target, additional_forward_args, perturbations_per_eval,
                         check_batch_output=features.require_shared)
        self.features = features
        self.masks, self.num_features = features.masks, features.num_features
        self.feature_ids, self.feature_order = features.feature_ids, features.feature_order
        self.baselines = perturber.baselines

    def initialize(self, keep_row: Optional[Tensor] = None) -> Tensor:  # type: ignore[override]
        """First model call: the unperturbed inputs, or the one coalition ``keep_row`` ``[F]``."""
        return super().initialize(None if keep_row is None else keep_row.reshape(1, -1))

    def evaluate(self, keep: Tensor) -> Tensor:
        """Model outputs on the coalition rows ``keep`` ``[R, F]`` bool: ``[R, *row_shape]``."""
        if keep.dtype != torch.bool or keep.dim() != 2 or keep.shape[1] != self.num_features:
            raise AttributionInputError(
                f"keep must be a bool tensor of shape [R, {self.num_features}], got {keep.dtype} "
                f"{tuple(keep.shape)}")
        return self.run(keep.shape[0], lambda a, b: keep[a:b])

    def perturbed_inputs(self, keep: Tensor) -> Tuple[Tensor, ...]:
        """``[rows, F]`` coalition rows -> one freshly allocated ``[rows * N, ...]`` tensor per input."""
        return self.perturber(keep, None)

    def to_input_shapes(self, table: Tensor) -> Tuple[Tensor, ...]:
        return self.features.to_input_shapes(table)
