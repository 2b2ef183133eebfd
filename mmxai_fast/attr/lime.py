"""Captum-compatible :class:`Lime` on the perturbation engine (and the pipeline KernelShap shares).

LIME (Ribeiro, Singh & Guestrin 2016) fits an interpretable linear model on binary samples
``z`` (``z_f = 1``: feature ``f`` kept, 0: replaced by the baseline), weighted by the similarity
of the perturbed input to the original. Here a sample **is** an engine coalition row, so:

1. all samples are drawn at once on the input's device (Captum draws one ``[1, F]`` Bernoulli
   row per sample on the CPU generator; one ``[G, n, F]`` draw consumes the same stream, so on
   CPU the same seed gives the same samples for one example or a scalar-per-batch model; for
   ``N > 1`` per-example outputs Captum's fits draw from the generator between examples (the
   ``DataLoader`` seed, the ``nn.Linear`` init), so examples after the first get other, equally
   distributed, samples);
2. a batch of ``N > 1`` examples with one output each is explained in one pass: every example
   gets its own feature ids (``id + n * F``), so one engine row carries a different sample for
   every example (Captum loops over the examples); a model call holds
   ``max(perturbations_per_eval // N, 1)`` rows, i.e. about ``perturbations_per_eval`` samples as
   in Captum (``"auto"``: as many rows as the memory budget allows);
3. the default similarity (exponential kernel of the cosine or euclidean distance) is computed
   from per-feature sums ``sum x^2``, ``sum x b``, ``sum b^2`` (one pass over the input) and the
   sample matrix, never from the perturbed inputs.

The interpretable model is fitted as Captum does (``fit(DataLoader)`` then ``representation()``),
one fit per example; Captum's default ``SkLearnLasso`` and ``SkLearnLinearRegression`` are fitted
in process by scikit-learn's algorithm in float64 instead (:mod:`mmxai_fast.attr._sklearn_fit`:
no 1.7-1.9 s scikit-learn/SciPy import on the first fit; Captum's float32 fit agrees to float32
rounding on well-conditioned samples).
"""
from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, Callable, List, Optional, Tuple, Union, cast

import torch
from captum._utils.common import (_format_additional_forward_args, _format_output, _format_tensor_into_tuples,
                                  _is_tuple)
from captum._utils.models.model import Model
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import Lime as _CaptumLime
from captum.attr._core import lime as _captum_lime
from captum.attr._utils.common import _format_input_baseline
from captum.log import log_usage
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from ._engine import AttributionInputError, check_perturbations_per_eval, coalition_evaluator
from ._evaluator import Evaluator
from .._validation import (check_background_id, check_feature_masks, check_inputs, check_interpretable_width,
                           int_at_least)
from ._features import FeatureMap, ids_present
from ._perturbers import CoalitionPerturber
from ._sklearn_fit import fit_without_sklearn

__all__ = ["Lime"]

_EXP_KERNEL_QUALNAME = "get_exp_kernel_similarity_function.<locals>.default_exp_kernel"
_MANY_FEATURES_WARNING = (
    "Attempting to construct interpretable model with > 10000 features.This can be very slow or lead to OOM "
    "issues. Please provide a featuremask which groups input features to reduce the number of interpretablefeatures. ")
_PER_EXAMPLE_WARNING = (
    "You are providing multiple inputs for Lime / Kernel SHAP attributions. This trains a separate "
    "interpretable model for each example, which can be time consuming. It is recommended to compute "
    "attributions for one example at a time.")

#: ``draw_rows(groups, n_samples, num_features, device) -> [G, R, F] bool`` samples.
RowSampler = Callable[[int, int, int, torch.device], Tensor]


def check_captum_path(background_id: Any) -> None:
    """Captum's own implementation (custom sampling or similarity) has no declared background."""
    if background_id is not None:
        raise AttributionInputError(
            "background_id must be None with a custom perturb_func, similarity_func or interpretable-space "
            f"transform (Captum's own implementation runs), got {background_id!r}")


def exp_kernel_params(func: Any) -> Optional[Tuple[str, float]]:
    """``(distance_mode, kernel_width)`` when ``func`` was made by Captum's
    ``get_exp_kernel_similarity_function``, else None."""
    if getattr(func, "__qualname__", None) != _EXP_KERNEL_QUALNAME or \
            getattr(func, "__module__", None) != _captum_lime.__name__:
        return None
    nonlocals = inspect.getclosurevars(func).nonlocals
    return nonlocals.get("distance_mode", "cosine"), float(nonlocals.get("kernel_width", 1.0))


def interpretable_masks(feature_mask: Union[None, Tensor, Tuple[Tensor, ...]],
                        inputs: Tuple[Tensor, ...]) -> Tuple[Tuple[Tensor, ...], int]:
    """The shared mask check (:func:`~mmxai_fast.attr._features.check_feature_masks`), then
    Captum's ``construct_feature_mask`` (default mask, shift to 0 with its warning); returns the
    masks and ``F``."""
    check_inputs(inputs)
    if feature_mask is not None:
        check_feature_masks(_format_tensor_into_tuples(feature_mask), inputs)
    return _captum_lime.construct_feature_mask(feature_mask, inputs)


def background_column(feature_mask: Union[None, Tensor, Tuple[Tensor, ...]], background_id: Optional[int],
                      num_features: int) -> Optional[int]:
    """The interpretable column of a declared background id (Captum shifts the ids to start at
    0), or None when no background is declared or the id is outside ``0 .. max id``."""
    if check_background_id(background_id) is None:
        return None
    shift = 0 if feature_mask is None else \
        min(int(m.min()) for m in _format_tensor_into_tuples(feature_mask) if m.numel())
    column = background_id - shift
    return column if 0 <= column < num_features else None


def drop_background_column(masks: Tuple[Tensor, ...], column: int, num_features: int) -> Tuple[Tensor, ...]:
    """Ids after ``column`` move down by one; ``column``'s elements get id ``F - 1``: one past the
    ``F - 1`` features left, the background."""
    return tuple(torch.where(m == column, num_features - 1, m - (m > column).to(m.dtype)) for m in masks)


def _per_example_ids(masks: Tuple[Tensor, ...], inputs: Tuple[Tensor, ...], num_features: int,
                     has_background: bool = False) -> Tuple[Tensor, ...]:
    """Example ``k``'s feature ``f`` -> ``f + k * F``; the background (id ``F``) -> ``N * F``."""
    ids = []
    background = inputs[0].shape[0] * num_features
    for mask, x in zip(masks, inputs):
        mask = mask.reshape((1,) * (x.dim() - mask.dim()) + tuple(mask.shape)).to(x.device).long()
        offsets = torch.arange(x.shape[0], device=x.device).reshape((-1,) + (1,) * (x.dim() - 1)) * num_features
        per_example = mask + offsets
        ids.append(torch.where(mask == num_features, background, per_example) if has_background else per_example)
    return tuple(ids)


def exp_kernel_weights(perturber: CoalitionPerturber, rows: Tensor, distance_mode: str, kernel_width: float) -> Tensor:
    """Captum's default similarity ``exp(-d^2 / (2 w^2))`` for every sample, ``[G, R]`` float64.

    ``d`` is ``1 - cos(x, x_z)`` or ``|x - x_z|`` over the flattened (tuple of) example(s), with
    ``x_z = where(z[id], x, baseline)``; both follow from per-feature sums over the input.
    A declared background (the perturber's ``keep_last`` column ``N * F``) is in every ``x_z``.
    """
    groups, _, num_features = rows.shape
    n = perturber.inputs[0].shape[0]
    device, width = rows.device, n * num_features
    names = ("xx", "xb", "bb") if distance_mode == "cosine" else ("dd",)
    sums = {name: torch.zeros(width + 1, dtype=torch.float64, device=device) for name in names}
    always = torch.zeros(n, dtype=torch.float64, device=device)  # sum x^2 over the background, per example
    for x, ids, base in zip(perturber.inputs, perturber.masks, perturber.baselines):
        xd = x.to(torch.float64)
        bd = torch.as_tensor(base, device=x.device).to(torch.float64).expand(x.shape)
        flat_ids = ids.expand(x.shape).reshape(-1).to(device)
        terms = {"xx": lambda: xd * xd, "xb": lambda: xd * bd, "bb": lambda: bd * bd, "dd": lambda: (xd - bd) ** 2}
        for name in names:
            sums[name].index_add_(0, flat_ids, terms[name]().reshape(-1).to(device))
        if perturber.keep_last and distance_mode == "cosine":
            always += torch.where(ids == width, xd * xd, 0).reshape(x.shape[0], -1).sum(1).to(device)
    per_group = {}
    for name, values in sums.items():
        values = values[:width].reshape(n, num_features)
        per_group[name] = values.sum(0, keepdim=True) if groups == 1 and n > 1 else values
    kept_always = always.sum().reshape(1, 1) if groups == 1 and n > 1 else always.reshape(-1, 1)
    z = rows.to(torch.float64)

    def kept(a: Tensor, b: Tensor) -> Tensor:  # sum_f z_f a_f + (1 - z_f) b_f, per sample
        return (z @ (a - b).unsqueeze(-1)).squeeze(-1) + b.sum(-1, keepdim=True)

    if distance_mode == "cosine":
        eps = 1e-8
        dot = kept(per_group["xx"], per_group["xb"]) + kept_always
        norm_x = (per_group["xx"].sum(-1, keepdim=True) + kept_always).sqrt().clamp_min(eps)
        norm_p = (kept(per_group["xx"], per_group["bb"]) + kept_always).clamp_min(0).sqrt().clamp_min(eps)
        distance_sq = (1 - dot / (norm_x * norm_p)) ** 2
    else:
        distance_sq = kept(torch.zeros_like(per_group["dd"]), per_group["dd"])
    return torch.exp(-distance_sq / (2 * kernel_width ** 2))


class Lime(_CaptumLime):
    """Drop-in for ``captum.attr.Lime`` (Captum 0.9), batched on the engine.

    Same constructor (default interpretable model ``SkLearnLasso(alpha=0.01)``, exponential
    cosine kernel, Bernoulli(0.5) sampling) and :meth:`attribute` arguments. With the default
    ``perturb_func`` and a similarity made by ``get_exp_kernel_similarity_function`` the
    samples are drawn on the input's device in one call (on CPU the same stream as Captum, so for
    one example, or a scalar-per-batch model, the same seed gives the same samples and, up to
    float32 rounding of the model outputs, the same coefficients; see the module docstring for
    ``N > 1`` per-example outputs), the perturbed inputs are built by the engine's batched kernel and the weights
    come from per-feature sums (module docstring). Any ``interpretable_model`` works (it is
    fitted like Captum does); :class:`~mmxai_fast.attr.TorchWeightedLinearRegression` fits on
    the device. A custom ``perturb_func``, ``similarity_func`` or interpretable-space transform
    runs Captum's own implementation.

    Differences (extensions): ``perturbations_per_eval="auto"``; a batch of ``N`` examples with
    one output each is evaluated in shared model calls (each example still has its own samples
    and fit); invalid masks/baselines/``n_samples``, wrong output sizes and NaN outputs raise
    :class:`AttributionInputError` before the fit; for ``N == 1`` the first model call is the
    first sample (Captum's count of model calls), for ``N > 1`` an extra first call on the
    unperturbed batch decides per-example vs per-batch outputs (as Captum's does).
    """

    def __init__(
        self,
        forward_func: Callable[..., Union[int, float, Tensor]],
        interpretable_model: Optional[Model] = None,
        similarity_func: Optional[Callable] = None,
        perturb_func: Optional[Callable] = None,
    ) -> None:
        _CaptumLime.__init__(self, forward_func, interpretable_model, similarity_func, perturb_func)

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
        background_id: Optional[int] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        """LIME coefficients, as ``captum.attr.Lime.attribute``.

        Args:
            inputs: tensor or tuple of tensors, first dim ``N``.
            baselines: None (zeros), a number, a tensor broadcastable to the input, or a tuple.
            target: Captum target (int, tuple, tensor, list or None); the selected output must
                be one scalar per example (or one per batch).
            additional_forward_args: extra arguments for ``forward_func``.
            feature_mask: integer tensor or tuple, broadcastable to the inputs, ids shared
                across the tuple (shifted to start at 0, with Captum's warning). None: every
                scalar of an example is a feature.
            n_samples: samples per example.
            perturbations_per_eval: samples per model call (int >= 1) or ``"auto"``.
            return_input_shape: coefficients scattered to the inputs' shapes (True) or the raw
                ``[1, F]`` (``[N, F]`` for per-example outputs) coefficient tensor.
            show_progress: tqdm progress bar ("Lime attribution").
            background_id: (keyword) a ``feature_mask`` id that is no feature: no interpretable
                column, always at its input value (in the samples and the similarity),
                attribution 0 there. None (default): every id is a feature, as Captum.

        Returns:
            float32 attributions shaped like the inputs (first dim ``N`` for per-example outputs,
            1 for a scalar per batch), a tuple when ``inputs`` is a tuple; or the coefficients
            (``[1, F]``, ``F`` without the background's column).

        Raises:
            AttributionInputError: invalid arguments or model outputs.
        """
        if not self._runs_on_engine():
            check_captum_path(background_id)
            return _CaptumLime.attribute(
                self, inputs, baselines=baselines, target=target, additional_forward_args=additional_forward_args,
                feature_mask=feature_mask, n_samples=n_samples,
                perturbations_per_eval=1 if perturbations_per_eval == "auto" else perturbations_per_eval,
                return_input_shape=return_input_shape, show_progress=show_progress)
        distance_mode, kernel_width = exp_kernel_params(self.similarity_func)
        if distance_mode not in ("cosine", "euclidean"):
            raise AttributionInputError("distance_mode must be either cosine or euclidean.")

        def draw_rows(groups: int, n: int, num_features: int, device: torch.device) -> Tensor:
            return torch.bernoulli(torch.full((groups, n, num_features), 0.5, device=device)).bool()

        def weigh(perturber: CoalitionPerturber, rows: Tensor) -> Tensor:
            return exp_kernel_weights(perturber, rows, distance_mode, kernel_width)

        return self._attribute_on_engine(inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                                         perturbations_per_eval, return_input_shape, show_progress, draw_rows, weigh,
                                         background_id=background_id)

    def _runs_on_engine(self) -> bool:
        """The default sampling, similarity and transform (what the engine path implements)."""
        return (self.perturb_interpretable_space
                and self.from_interp_rep_transform is _captum_lime.default_from_interp_rep_transform
                and self.perturb_func is _captum_lime.default_perturb_func
                and exp_kernel_params(self.similarity_func) is not None)

    def _check_num_features(self, num_features: int) -> None:
        """Hook: reject a feature count before any model call (KernelShap needs 2)."""

    # ------------------------------------------------------------------ shared pipeline

    def _attribute_on_engine(self, inputs, baselines, target, additional_forward_args, feature_mask, n_samples,
                             perturbations_per_eval, return_input_shape, show_progress,
                             draw_rows: RowSampler, weigh: Callable[[CoalitionPerturber, Tensor], Tensor],
                             solve: Optional[Callable[[Tensor, Tensor, Tensor], Tensor]] = None,
                             background_id: Optional[int] = None):
        """Sample, evaluate on the engine, weigh, fit, format (Lime and KernelShap).

        ``solve(rows [G, R, F], outputs [G, R], weights [G, R]) -> [G, F]`` replaces the
        interpretable model when given.
        """
        is_inputs_tuple = _is_tuple(inputs)
        formatted_inputs, formatted_baselines = _format_input_baseline(inputs, baselines)
        formatted_args = _format_additional_forward_args(additional_forward_args)
        int_at_least(n_samples, "n_samples", 1, AttributionInputError)
        check_perturbations_per_eval(perturbations_per_eval)
        masks, num_features = interpretable_masks(feature_mask, formatted_inputs)
        live = [m for m in masks if m.numel()]
        check_interpretable_width(sum(int(ids_present(m).numel()) for m in live), max(int(m.max()) for m in live),
                                  num_features, self.get_name(), n_samples)
        column = background_column(feature_mask, background_id, num_features)
        if column is not None:  # the background: no interpretable column, always kept (id F after the drop)
            masks, num_features = drop_background_column(masks, column, num_features), num_features - 1
        has_background = column is not None
        if num_features < 1:
            raise AttributionInputError(f"feature_mask must hold a feature besides background_id, got only id {background_id}")
        self._check_num_features(num_features)
        if num_features > 10000:
            warnings.warn(_MANY_FEATURES_WARNING, stacklevel=3)
        n = formatted_inputs[0].shape[0]
        with torch.no_grad():
            # Every example gets its own ids (id + n * F): one row carries one sample per example,
            # so scalar-per-batch models may have per-example masks too.
            evaluator, _ = coalition_evaluator(
                self.forward_func, formatted_inputs, formatted_baselines,
                _per_example_ids(masks, formatted_inputs, num_features, has_background), target, formatted_args,
                perturbations_per_eval, compact_ids=False, num_features=n * num_features + int(has_background),
                shared_masks_per_batch=False, background_id=n * num_features if has_background else None)
            with evaluator.progress_bar(show_progress, f"{self.get_name()} attribution"):
                rows, outputs = self._evaluate_samples(evaluator, num_features, n_samples, draw_rows)
            weights = weigh(cast(CoalitionPerturber, evaluator.perturber), rows)
            if solve is not None:
                coefs = [c.reshape(1, -1) for c in solve(rows, outputs, weights).float()]  # [1, F] like Captum's
            else:
                coefs = self._fit_interpretable_model(rows, outputs, weights)
        per_example = rows.shape[0] > 1
        if not return_input_shape:
            return torch.cat([c.reshape(1, -1) for c in coefs]) if per_example else coefs[0]
        table = torch.stack([c.flatten() for c in coefs]).float().t()  # [F, G]
        groups = len(coefs)
        masks = tuple(m.reshape((1,) * (x.dim() - m.dim()) + tuple(m.shape)) for m, x in zip(masks, formatted_inputs))
        masks = tuple(m if m.shape[0] == groups else m[:1] for m in masks)
        features = FeatureMap(masks, formatted_inputs, compact_ids=False, num_features=num_features + int(has_background),
                              background_id=num_features if has_background else None)
        return _format_output(is_inputs_tuple, features.to_input_shapes(table))

    def _evaluate_samples(self, engine: Evaluator, num_features: int, n_samples: int,
                          draw_rows: RowSampler) -> Tuple[Tensor, Tensor]:
        """Draw ``[G, R, F]`` samples and evaluate them: returns (rows, outputs ``[G, R]``)."""
        n = engine.num_examples
        device = engine.inputs[0].device
        if n > 1:  # Captum's first call on the batch: one output per example or one per batch?
            reference = engine.initialize()
            if reference.numel() == n:
                groups = n
                warnings.warn(_PER_EXAMPLE_WARNING, stacklevel=4)
                engine.samples_per_row = n  # Captum's calls hold ppe samples: so do ours
                engine.chunk_size()
            elif reference.numel() == 1:
                groups = 1
            else:
                raise AttributionInputError(
                    "Invalid number of outputs, forward function should return a scalar per example or a scalar "
                    f"per input batch: with {n} examples it returned shape {tuple(reference.shape)} (select one "
                    "output per example with target)")
            rows = draw_rows(groups, n_samples, num_features, device)
            first_is_input = bool(rows[:, 0].all())
            outputs = [reference.reshape(1, -1)] if first_is_input else []
            todo = rows[:, 1:] if first_is_input else rows
        else:
            rows = draw_rows(1, n_samples, num_features, device)
            first = engine.initialize(rows[:, 0].reshape(1, -1))
            if first.numel() != 1:
                raise AttributionInputError(
                    "Number of outputs is not appropriate, must return one output per perturbed input: "
                    f"forward_func returned shape {tuple(first.shape)} for one example (select one output with "
                    "target)")
            outputs, todo = [first.reshape(1, -1)], rows[:, 1:]
        remaining = todo.shape[1]
        engine.set_progress_total(engine.num_model_calls + math.ceil(remaining / engine.rows_per_eval))

        def make_keep(start: int, stop: int) -> Tensor:
            block = todo[:, start:stop].expand(n, -1, -1)  # [N, rows, F]: one sample per example
            return block.transpose(0, 1).reshape(stop - start, n * num_features)

        if remaining:
            evaluated = engine.run(remaining, make_keep)
            outputs.append(evaluated.reshape(remaining, -1).to(outputs[0].device if outputs else evaluated.device))
        values = torch.cat(outputs) if len(outputs) > 1 else outputs[0]  # [R, G]
        return rows, values.t()

    def _fit_interpretable_model(self, rows: Tensor, outputs: Tensor, weights: Tensor) -> List[Tensor]:
        """Captum's fit, once per group: ``fit(DataLoader((z, y, w)))`` then ``representation()``
        (Captum's scikit-learn Lasso / LinearRegression: the same fit without importing
        scikit-learn, :mod:`mmxai_fast.attr._sklearn_fit`)."""
        coefs = []
        num_rows = rows.shape[1]
        for z, y, w in zip(rows, outputs, weights):
            data = DataLoader(TensorDataset(z.float(), y.float(), w.float()), batch_size=num_rows)
            if fit_without_sklearn(self.interpretable_model, data) is None:
                self.interpretable_model.fit(data)
            coefs.append(self.interpretable_model.representation())
        return coefs
