"""Argument checks shared by the public ops. Each raises before any work, naming the argument."""
from __future__ import annotations

from typing import Sequence

import torch


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


def exact_ints(values, name: str) -> list:
    """``values`` (a list or tuple) as Python ints; a fractional or non-integer entry raises."""
    import operator

    out = []
    for k, v in enumerate(values):
        try:
            if isinstance(v, bool):
                raise TypeError
            out.append(operator.index(v))
        except TypeError:
            raise TypeError(f"{name}[{k}] must be an int, got {v!r}") from None
    return out


def require_dense(t: torch.Tensor, name: str, error: type = ValueError) -> None:
    """``t`` must be a strided tensor holding data: sparse layouts and meta tensors are refused."""
    if t.layout != torch.strided or t.is_meta:
        got = f"a {t.layout} tensor" if t.layout != torch.strided else "a meta tensor (no data)"
        raise error(f"{name} must be a dense tensor (torch.strided layout, with data), got {got}")
