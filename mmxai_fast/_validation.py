"""Argument checks shared by the public ops and the attribution classes: one vocabulary.

Each raises before any work with "NAME must be EXPECTED, got RECEIVED", in the caller's error
class (``error=``; the attribution checks at the end raise
:class:`~mmxai_fast.attr.AttributionInputError`).
"""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor


def require_tensor(value, name: str) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def require_floating(t: torch.Tensor, name: str) -> None:
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")


def require_integer(t: torch.Tensor, name: str) -> None:
    if t.is_floating_point() or t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"{name} must have an integer dtype, got {t.dtype}")


def require_ndim(t: torch.Tensor, name: str, ndim: int, layout: str) -> None:
    if t.dim() != ndim:
        raise ValueError(f"{name} must have shape {layout} ({ndim} dims), got shape {tuple(t.shape)}")


def require_same_device(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    if a.device != b.device:
        raise ValueError(f"{name_b} must be on the same device as {name_a} ({a.device}), got {b.device}")


def require_out(out, like: torch.Tensor, shape: Sequence[int], layout: str, like_name: str = "x") -> None:
    """An ``out=`` buffer: a contiguous tensor of ``shape`` (``layout`` names its dims) with
    ``like``'s dtype, on ``like``'s device."""
    require_tensor(out, "out")
    shape = tuple(shape)
    if tuple(out.shape) != shape or out.dtype != like.dtype or not out.is_contiguous():
        raise ValueError(f"out must be a contiguous {like.dtype} tensor of shape {shape} ({layout}), got "
                         f"{'a contiguous' if out.is_contiguous() else 'a non-contiguous'} {out.dtype} tensor "
                         f"of shape {tuple(out.shape)}")
    require_same_device(like_name, like, "out", out)


def require_broadcastable(shape: Sequence[int], target: Sequence[int], name: str, target_name: str) -> None:
    """``shape`` must broadcast to ``target`` without changing ``target``."""
    shape, target = tuple(shape), tuple(target)
    ok = len(shape) <= len(target) and all(
        s == t or s == 1 for s, t in zip(shape[::-1], target[::-1])
    )
    if not ok:
        raise ValueError(
            f"{name} of shape {shape} must be broadcastable to {target_name} shape {target}"
        )


def positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def is_int(value: Any) -> bool:
    """A Python int that is not a bool (``True`` is an ``int`` subclass)."""
    return isinstance(value, int) and not isinstance(value, bool)


def int_at_least(value, name: str, low: int, error: type = ValueError) -> int:
    """``value`` must be an int (not bool) ``>= low``."""
    if not is_int(value) or value < low:
        raise error(f"{name} must be an int >= {low}, got {value!r}")
    return value


def int_in_range(value, name: str, low: int, high: int, context: str = "", error: type = ValueError) -> int:
    """``value`` must be an int (not bool) with ``low <= value < high``; ``context`` follows the
    range in the message (" for a 3-dim input")."""
    if not is_int(value) or not low <= value < high:
        raise error(f"{name} must be an int in [{low}, {high}){context}, got {value!r}")
    return value


def finite_real(value, name: str, error: type = ValueError) -> float:
    """``value`` as a float: an int or float (not bool) that is finite."""
    import math

    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise error(f"{name} must be a finite number, got {value!r}")
    return float(value)


def optional_int_at_least(value, name: str, low: int, error: type = ValueError) -> Optional[int]:
    """``value`` must be None or an int (not bool) ``>= low``."""
    if value is not None and (not is_int(value) or value < low):
        raise error(f"{name} must be None or an int >= {low}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Added by the ops engineer (used by mmxai_fast/ops/*); keep as one block when restructuring.
# ---------------------------------------------------------------------------------------------

def real_in_range(value, name: str, low: float, high: float) -> float:
    """``value`` as a float: a finite real number (not bool) with ``low <= value <= high``."""
    import math
    from numbers import Real

    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(float(value)) \
            or not low <= float(value) <= high:
        raise ValueError(f"{name} must be a finite number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _byte_span(t: torch.Tensor):
    """``(storage pointer, first byte, end byte)`` of the memory ``t`` can touch (strides >= 0)."""
    if t.numel() == 0:
        return None
    start = t.storage_offset() * t.element_size()
    extent = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride()))
    return t.untyped_storage().data_ptr(), start, start + (extent + 1) * t.element_size()


def require_disjoint(name_a: str, a: torch.Tensor, name_b: str, b: torch.Tensor) -> None:
    """``a`` and ``b`` must not share memory, not even partly (byte ranges of one storage)."""
    span_a, span_b = _byte_span(a), _byte_span(b)
    if span_a is None or span_b is None or span_a[0] != span_b[0]:
        return
    if span_a[1] < span_b[2] and span_b[1] < span_a[2]:
        raise ValueError(f"{name_b} must not overlap the memory of {name_a}, got views of one storage "
                         f"(bytes [{span_a[1]}, {span_a[2]}) and [{span_b[1]}, {span_b[2]}))")


def exact_ints(values, name: str, error: type = TypeError) -> list:
    """``values`` (a list or tuple) as Python ints; a fractional or non-integer entry raises."""
    import operator

    out = []
    for k, v in enumerate(values):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            raise error(f"{name}[{k}] must be an int, got {v!r}") from None
    return out


def require_dense(t: torch.Tensor, name: str, error: type = ValueError) -> None:
    """``t`` must be a strided tensor holding data: sparse layouts and meta tensors are refused."""
    if t.layout != torch.strided or t.is_meta:
        got = f"a {t.layout} tensor" if t.layout != torch.strided else "a meta tensor (no data)"
        raise error(f"{name} must be a dense tensor (torch.strided layout, with data), got {got}")


# ---------------------------------------------------------------------------------------------
# Inputs, baselines and feature masks of the attribution classes (AttributionInputError).
# ---------------------------------------------------------------------------------------------

def _attribution_error() -> type:
    from .attr._errors import AttributionInputError  # lazy: mmxai_fast.attr imports this module
    return AttributionInputError


def broadcastable(shape: Sequence[int], target: Sequence[int]) -> bool:
    shape, target = tuple(shape), tuple(target)
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


def check_inputs(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Formatted inputs: a non-empty tuple of tensors, each with a batch dim. No common dim 0 is
    required: like Captum, a tensor may hold a variable-length list (sparse features, possibly
    empty); every tensor is repeated whole per perturbation and examples are counted on
    ``inputs[0]``."""
    error = _attribution_error()
    if not isinstance(inputs, tuple) or not inputs:
        raise error("inputs must be a tensor or a non-empty tuple of tensors")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise error(f"inputs[{i}] must be a torch.Tensor, got {type(inp).__name__}")
        require_dense(inp, f"inputs[{i}]", error)
        if inp.dim() == 0:
            raise error(f"inputs[{i}] must have a batch dim, got a 0-d tensor")
    return inputs


def check_baselines(baselines: Sequence[Any], inputs: Tuple[Tensor, ...]) -> Tuple[Union[Tensor, float], ...]:
    """One number, bool (read as an int) or tensor broadcastable to its input, per input."""
    error = _attribution_error()
    if len(baselines) != len(inputs):
        raise error(f"baselines must give one value per input tensor ({len(inputs)}), got {len(baselines)}")
    checked = []
    for i, (base, inp) in enumerate(zip(baselines, inputs)):
        if isinstance(base, Tensor):
            require_dense(base, f"baselines[{i}]", error)
            if not broadcastable(base.shape, inp.shape):
                raise error(f"baselines[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                            f"got shape {tuple(base.shape)}")
            if base.device != inp.device:
                raise error(f"baselines[{i}] must be on the device of inputs[{i}] ({inp.device}), got {base.device}")
        elif isinstance(base, bool):  # Captum's default baseline for bool inputs is False
            base = int(base)
        elif not isinstance(base, (int, float)):
            raise error(f"baselines[{i}] must be a number, a bool or a tensor, got {type(base).__name__}")
        checked.append(base)
    return tuple(checked)


def integral_feature_masks(masks: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Captum compares mask ids with ``==``, so a floating mask of whole numbers (``zeros_like`` of
    a float input) groups features there: such masks become int64; other ids are refused."""
    converted = []
    for i, mask in enumerate(masks):
        if isinstance(mask, Tensor) and mask.is_floating_point():
            bad = ~torch.isfinite(mask) | (mask != mask.round())
            if bool(bad.any()):
                raise _attribution_error()(
                    f"feature_mask[{i}] must hold whole-number ids, got {mask[bad].flatten()[0].item()}")
            mask = mask.long()
        converted.append(mask)
    return tuple(converted)


def check_feature_masks(feature_mask: Sequence[Any], inputs: Tuple[Tensor, ...]) -> List[Tensor]:
    """One integer tensor per input, broadcastable to it, ids >= 0, not all empty; returned
    reshaped to the input's number of dims and on its device."""
    from .ops.perturb import MASK_DTYPES  # lazy: the ops import this module

    error = _attribution_error()
    if len(feature_mask) != len(inputs):
        raise error(f"feature_mask must give one tensor per input tensor ({len(inputs)}), got {len(feature_mask)}")
    masks = []
    for i, (mask, inp) in enumerate(zip(feature_mask, inputs)):
        if not isinstance(mask, Tensor) or mask.dtype not in MASK_DTYPES:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise error(f"feature_mask[{i}] must be an integer tensor, got {got}")
        require_dense(mask, f"feature_mask[{i}]", error)
        if not broadcastable(mask.shape, inp.shape):
            raise error(f"feature_mask[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                        f"got shape {tuple(mask.shape)}")
        masks.append(mask.reshape((1,) * (inp.dim() - mask.dim()) + tuple(mask.shape)).to(inp.device))
    if not any(m.numel() for m in masks) and any(inp.numel() for inp in inputs):  # N = 0: nothing to do
        raise error("feature_mask is empty: no features to perturb")
    for i, mask in enumerate(masks):
        if mask.numel() and int(mask.min()) < 0:
            raise error(f"feature_mask[{i}] ids must be >= 0, got min {int(mask.min())}")
    return masks


def check_dense(value: Any, name: str) -> None:
    """Every tensor of ``value`` (a tensor, a tuple of them, or anything else: ignored) dense."""
    error = _attribution_error()
    if isinstance(value, Tensor):
        require_dense(value, name, error)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if isinstance(item, Tensor):
                require_dense(item, f"{name}[{i}]", error)


def check_background_id(background_id: Any) -> Optional[int]:
    """A declared background: None or a ``feature_mask`` id (an int >= 0)."""
    return optional_int_at_least(background_id, "background_id", 0, _attribution_error())


def byte_size(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB"


def check_interpretable_width(num_present: int, high: int, num_features: int, what: str, n_samples: int) -> None:
    """Lime and KernelShap fit Captum's ``max id + 1`` interpretable features, absent ids
    included (their random columns change the fit), so they cannot be compacted: a mask whose id
    space (``num_features`` columns, largest id ``high``) is mostly gaps and wide is refused
    before any sample is drawn."""
    if num_features <= 4 * num_present + 10000:
        return
    raise _attribution_error()(
        f"feature_mask ids must be compact for {what} (Captum fits one interpretable feature per id "
        f"0 .. max id), got id {high}: {num_features} features of which {num_present} present, about "
        f"{byte_size(5 * n_samples * num_features)} of samples and a fit over {num_features} columns; "
        "renumber the ids to 0 .. K - 1 (torch.unique(mask, return_inverse=True))")
