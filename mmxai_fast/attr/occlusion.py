"""Captum-compatible :class:`Occlusion` running on the perturbation engine.

Windows are enumerated like Captum 0.9: all windows of ``inputs[0]`` (first trailing dim varying
fastest, see :mod:`mmxai_fast.ops.occlusion`), then those of ``inputs[1]``, ...; a model call
may hold windows of several tensors. Each row is one **global window id**;
:class:`~mmxai_fast.attr._perturbers.WindowPerturber` builds the occluded copies with
:func:`~mmxai_fast.ops.occlusion_batch` (a box copy per window, no full-size mask), and the per-window
output differences become attributions through
:func:`~mmxai_fast.ops.occlusion.occlusion_attribution` (mean over the covering windows).
"""

import math
from typing import Any, Callable, List, Optional, Tuple, Union

import torch
from captum._utils.common import _format_additional_forward_args, _format_output, _is_tuple
from captum._utils.typing import BaselineType, TargetType, TensorOrTupleOfTensorsGeneric
from captum.attr import Occlusion as _CaptumOcclusion
from captum.attr._utils.common import _format_input_baseline
from captum.log import log_usage
from torch import Tensor

from .._validation import check_baselines, check_inputs, exact_ints
from ..ops import OcclusionWindows, occlusion_attribution
from ._errors import AttributionInputError
from ._evaluator import Evaluator, check_perturbations_per_eval
from ._incremental import check_incremental, use_incremental
from ._perturbers import WindowPerturber

__all__ = ["Occlusion"]

WindowArg = Union[Tuple[int, ...], Tuple[Tuple[int, ...], ...]]
StrideArg = Union[None, int, Tuple[int, ...], Tuple[Union[int, Tuple[int, ...]], ...]]


def _int_tuple(value: Any, name: str) -> Tuple[int, ...]:
    if not isinstance(value, (tuple, list, torch.Size)):
        raise AttributionInputError(f"{name} must be a tuple of ints, got {value!r}")
    return tuple(exact_ints(value, name, AttributionInputError))


def _format_windows(sliding_window_shapes: Any, inputs: Tuple[Tensor, ...]) -> Tuple[Tuple[int, ...], ...]:
    """Captum's ``_format_and_verify_sliding_window_shapes`` with errors naming the argument."""
    shapes = sliding_window_shapes
    if isinstance(shapes, (tuple, list)) and (not shapes or not isinstance(shapes[0], (tuple, list))):
        shapes = (shapes,)
    if not isinstance(shapes, (tuple, list)) or len(shapes) != len(inputs):
        raise AttributionInputError(
            f"sliding_window_shapes must give one shape per input tensor ({len(inputs)}), got {sliding_window_shapes!r}")
    out = []
    for i, (shape, inp) in enumerate(zip(shapes, inputs)):
        shape = _int_tuple(shape, f"sliding_window_shapes[{i}]")
        if len(shape) != inp.dim() - 1:
            raise AttributionInputError(
                f"sliding_window_shapes[{i}] must have {inp.dim() - 1} dims (inputs[{i}] has shape "
                f"{tuple(inp.shape)}), got {shape}")
        out.append(shape)
    return tuple(out)


def _format_strides(strides: Any, inputs: Tuple[Tensor, ...]) -> Tuple[Tuple[int, ...], ...]:
    """Captum's ``_format_and_verify_strides``, expanded to one int per trailing dim."""
    if strides is None:
        strides = (1,) * len(inputs)
    if len(inputs) == 1 and not (isinstance(strides, tuple) and len(strides) == 1):
        strides = (strides,)
    if not isinstance(strides, tuple) or len(strides) != len(inputs):
        raise AttributionInputError(f"strides must give one entry per input tensor ({len(inputs)}), got {strides!r}")
    out = []
    for i, (stride, inp) in enumerate(zip(strides, inputs)):
        if isinstance(stride, int) and not isinstance(stride, bool):
            stride = (stride,) * (inp.dim() - 1)
        else:
            stride = _int_tuple(stride, f"strides[{i}]")
            if len(stride) != inp.dim() - 1:
                raise AttributionInputError(
                    f"strides[{i}] must be an int or a tuple of {inp.dim() - 1} ints (inputs[{i}] has shape "
                    f"{tuple(inp.shape)}), got {stride}")
        out.append(stride)
    return tuple(out)


def _make_windows(inputs, window_shapes, strides) -> Tuple[OcclusionWindows, ...]:
    """One :class:`OcclusionWindows` per input, with Captum's checks (window <= input, stride <=
    window where the window does not span the dim). 1-d inputs ``(N,)`` become ``(N, 1)``."""
    result = []
    for i, (inp, window, stride) in enumerate(zip(inputs, window_shapes, strides)):
        shape = tuple(inp.shape[1:])
        for k, (n, w, s) in enumerate(zip(shape, window, stride)):
            if w < 1 or s < 1:
                raise AttributionInputError(
                    f"sliding_window_shapes[{i}] and strides[{i}] must be positive, got {window} and {stride}")
            if w > n:
                raise AttributionInputError(
                    f"sliding_window_shapes[{i}] {window} cannot exceed the dims of inputs[{i}] {shape} "
                    f"(dim {k}: {w} > {n})")
            if n != w and s > w:
                raise AttributionInputError(
                    f"strides[{i}] {stride} cannot be larger than sliding_window_shapes[{i}] {window} "
                    f"(dim {k}: {s} > {w}) where the window does not span the input")
        result.append(OcclusionWindows(shape or (1,), window or (1,), stride or (1,)))
    return tuple(result)


class Occlusion(_CaptumOcclusion):
    """Drop-in for ``captum.attr.Occlusion`` (Captum 0.9), batched on the engine.

    Same constructor, same :meth:`attribute` arguments and defaults, same results: a window
    (hyperrectangle) slides over each input tensor; each position is replaced by the baseline
    and credited with ``f(input) - f(occluded input)``; an element's attribution is the mean
    over the windows covering it. Occluded copies are box copies (no full-size mask per window)
    and the averaging is one pass over the per-window differences. A subclass of Captum's class,
    so ``isinstance`` checks keep working.

    Differences (extensions): ``perturbations_per_eval="auto"`` picks the chunk from a memory
    budget and halves it on ``torch.OutOfMemoryError``; bad arguments, model outputs that do not
    grow with the batch and NaN outputs raise :class:`AttributionInputError` (a ``ValueError``
    that is also an ``AssertionError``, like Captum's asserts); occluded inputs keep the input
    dtype (Captum promotes to the baseline's); the progress bar counts windows, not elements.
    """

    def __init__(self, forward_func: Callable[..., Tensor]) -> None:
        super().__init__(forward_func)

    @log_usage(part_of_slo=True)  # also gives attribute.__wrapped__, used by NoiseTunnel
    def attribute(  # type: ignore[override]
        self,
        inputs: TensorOrTupleOfTensorsGeneric,
        sliding_window_shapes: WindowArg,
        strides: StrideArg = None,
        baselines: BaselineType = None,
        target: TargetType = None,
        additional_forward_args: Optional[object] = None,
        perturbations_per_eval: int = 1,
        show_progress: bool = False,
        *,
        incremental: Union[bool, str, None] = None,
    ) -> TensorOrTupleOfTensorsGeneric:
        """Occlusion attributions, as ``captum.attr.Occlusion.attribute``.

        Args:
            inputs: tensor or tuple of tensors, first dim ``N`` (examples).
            sliding_window_shapes: window shape over ``inputs.shape[1:]``, or one per input.
            strides: None (1), an int, a tuple per dim, or (tuple inputs) one int/tuple per input.
                A stride may not exceed its window unless the window spans the dim.
            baselines: None (zeros), a number, a tensor broadcastable to the input, or a tuple of
                those (one per input tensor).
            target: Captum target: int, tuple, tensor, list or None (scalar output per example).
            additional_forward_args: extra arguments for ``forward_func`` (tensors are repeated
                along dim 0 per perturbation).
            perturbations_per_eval: windows per model call (int >= 1) or ``"auto"``.
            show_progress: tqdm progress bar ("Occlusion attribution").
            incremental: extension: True / ``"auto"`` recompute only each window's projective
                field (docs/incremental.md); report in ``self.last_incremental_report``. None
                (default): the patch policy's setting (``mmxai-fast run``: ``"auto"``), else False.

        Returns:
            float32 attributions shaped ``[n_outputs, *inputs[i].shape[1:]]`` per input
            (``n_outputs = N`` for a scalar per example); a tuple when ``inputs`` is a tuple.

        Raises:
            AttributionInputError: invalid arguments or model outputs.
        """
        is_inputs_tuple = _is_tuple(inputs)
        formatted_inputs, baselines = _format_input_baseline(inputs, baselines)
        formatted_args = _format_additional_forward_args(additional_forward_args)
        check_perturbations_per_eval(perturbations_per_eval)
        check_incremental(incremental)
        check_inputs(formatted_inputs)
        baselines = check_baselines(baselines, formatted_inputs)
        windows = _make_windows(formatted_inputs, _format_windows(sliding_window_shapes, formatted_inputs),
                                _format_strides(strides, formatted_inputs))
        perturber = WindowPerturber(formatted_inputs, baselines, windows)
        with torch.no_grad():
            evaluator = Evaluator(self.forward_func, formatted_inputs, perturber, target, formatted_args,
                                  perturbations_per_eval)
            self.last_incremental_report = use_incremental(evaluator, incremental)
            num_rows = perturber.total_windows
            with evaluator.progress_bar(show_progress, f"{self.get_name()} attribution"):
                initial = evaluator.initialize()
                evaluator.set_progress_total(math.ceil(num_rows / evaluator.rows_per_eval) + 1)
                outputs = evaluator.run(num_rows, lambda a, b: torch.arange(a, b))
                attributions = self._to_attributions(perturber, initial, outputs)
        return _format_output(is_inputs_tuple, attributions)

    @staticmethod
    def _to_attributions(perturber: WindowPerturber, initial: Tensor, outputs: Tensor) -> Tuple[Tensor, ...]:
        flat_initial = initial.reshape(1, -1)
        diffs = flat_initial - outputs.reshape(outputs.shape[0], -1).to(flat_initial.device)
        # Captum sums in the output dtype and returns float32; sum in float64 unless outputs are.
        diffs = diffs.to(torch.float64 if diffs.dtype == torch.float64 or not diffs.is_floating_point()
                         else torch.float32)
        result: List[Tensor] = []
        for x, windows, offset in zip(perturber.inputs, perturber.windows, perturber.offsets):
            per_window = diffs[offset:offset + windows.num_windows].t().to(x.device)  # [n_outputs, W]
            attr = occlusion_attribution(per_window, windows)
            result.append(attr.reshape((attr.shape[0],) + tuple(x.shape[1:])).float())
        return tuple(result)
