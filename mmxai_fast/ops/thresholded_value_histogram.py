"""Histogram of integer values where a score map exceeds a threshold: ``thresholded_value_histogram``.

The kernel behind Dynamic Window-based Training's window selection (RadiomicGAN, Selim et al.;
background.md section 3): count the HU values of the pixels whose Grad-CAM value exceeds
``th_fail``, one histogram per image, in one pass and without sorting.

Policy (NaN/Inf, identical on every backend): floating values are rounded half to even
(``torch.round``) and then compared with ``[low, high]`` as exact integers (a value near 2**62
lands in its own bin); values outside ``[low, high]`` and NaN/inf values are not counted; an
element counts when ``score > threshold`` compared exactly (in float64), so a NaN score never
counts and a NaN ``threshold`` is rejected.

Naming chain: ``thresholded_value_histogram_reference`` (oracle and fallback),
``_thresholded_value_histogram_cpu`` (C++ ``csrc/cpu/thresholded_value_histogram_cpu.cpp``),
``_thresholded_value_histogram_triton`` (``kernels/triton/thresholded_value_histogram.py``), the registered
``torch.ops.mmxai_fast.thresholded_value_histogram`` and the public ``thresholded_value_histogram``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import dtype_code, triton_module
from .._validation import require_floating, require_tensor

__all__ = ["thresholded_value_histogram", "thresholded_value_histogram_reference"]

#: Largest number of bins ``high - low + 1`` (16-bit values need 65536).
MAX_BINS = 1 << 24

_VALUE_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _as_rows(t: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``t`` as ``[B, L]`` (``B = 1`` when ``batch_dims == 0``)."""
    batch = t.shape[0] if batch_dims else 1
    return t.reshape(batch, -1) if t.numel() else t.new_zeros((batch, 0))


def thresholded_value_histogram_reference(values: torch.Tensor, scores: torch.Tensor, threshold: float,
                                          low: int, high: int, batch_dims: int = 0) -> torch.Tensor:
    """Plain-PyTorch oracle: ``torch.bincount`` of the selected, in-range values of each row.

    Args and Returns: as :func:`thresholded_value_histogram`.
    """
    rows_v, rows_s = _as_rows(values, batch_dims), _as_rows(scores, batch_dims)
    bins = high - low + 1
    counts = []
    for v, s in zip(rows_v, rows_s):
        v = v[s.double() > threshold]
        if v.is_floating_point():
            # Compare as int64, never as double: near 2**62 doubles cannot tell low from low + 1.
            v = torch.round(v.double())
            v = v[torch.isfinite(v) & (v.abs() < 2.0 ** 63)]
        v = v.long()
        v = v[(v >= low) & (v <= high)] - low
        counts.append(torch.bincount(v, minlength=bins))
    if not counts:
        return torch.zeros((0, bins), dtype=torch.int64, device=values.device)
    out = torch.stack(counts)
    return out if batch_dims else out[0]


def _thresholded_value_histogram_cpu(values, scores, threshold, low, high, batch_dims):
    rows_v, rows_s = _as_rows(values, batch_dims).contiguous(), _as_rows(scores, batch_dims).contiguous()
    counts = torch.empty((rows_v.shape[0], high - low + 1), dtype=torch.int64)
    compiled_module().thresholded_value_histogram(
        rows_v.data_ptr(), dtype_code(rows_v.dtype), rows_s.data_ptr(), dtype_code(rows_s.dtype),
        rows_v.shape[0], rows_v.shape[1], float(threshold), low, counts.shape[1], counts.data_ptr())
    return counts if batch_dims else counts[0]


def _thresholded_value_histogram_triton(values, scores, threshold, low, high, batch_dims):
    rows_v, rows_s = _as_rows(values, batch_dims).contiguous(), _as_rows(scores, batch_dims).contiguous()
    counts = torch.zeros((rows_v.shape[0], high - low + 1), dtype=torch.int64, device=values.device)
    if rows_v.numel():
        # A fill kernel, not a pageable host-to-device copy: no host synchronisation.
        threshold_t = torch.full((1,), float(threshold), dtype=torch.float64, device=values.device)
        triton_module("thresholded_value_histogram").thresholded_value_histogram_forward(rows_v, rows_s, threshold_t, low, counts)
    return counts if batch_dims else counts[0]


def _exact_integer_values(values: torch.Tensor, low: int, high: int) -> torch.Tensor:
    """Floating ``values`` as int64 (rounded), non-finite or huge ones mapped outside ``[low, high]``."""
    rounded = torch.round(values.double())
    outside = low - 1 if low > -2**63 else high + 1
    fits = torch.isfinite(rounded) & (rounded.abs() < 2.0 ** 63)
    return torch.where(fits, rounded, torch.zeros((), dtype=torch.float64, device=values.device)).long() \
        .masked_fill_(~fits, outside)


def _thresholded_value_histogram_triton_exact(values, scores, threshold, low, high, batch_dims):
    # The Triton kernel bins floating values through doubles, which cannot tell low from low + 1
    # beyond 2**53: there the values are rounded to int64 first (the integer path is exact).
    if values.is_floating_point() and max(abs(low), abs(high)) >= 2**53:
        values = _exact_integer_values(values, low, high)
    return _thresholded_value_histogram_triton(values, scores, threshold, low, high, batch_dims)


BACKENDS = B.OpBackends("thresholded_value_histogram", [
    B.cpu(_thresholded_value_histogram_cpu), B.triton(_thresholded_value_histogram_triton_exact),
    B.reference(thresholded_value_histogram_reference),
])


def _thresholded_value_histogram_impl(values: torch.Tensor, scores: torch.Tensor, threshold: float, low: int,
                                      high: int, batch_dims: int, backend: str) -> torch.Tensor:
    chosen = BACKENDS.select(backend, values.device, values.dtype)
    return chosen.impl(values, scores, threshold, low, high, batch_dims)


_thresholded_value_histogram_op = torch.library.custom_op(
    "mmxai_fast::thresholded_value_histogram", mutates_args=())(_thresholded_value_histogram_impl)


@_thresholded_value_histogram_op.register_fake
def _(values, scores, threshold, low, high, batch_dims, backend):
    shape = (values.shape[0], high - low + 1) if batch_dims else (high - low + 1,)
    return values.new_empty(shape, dtype=torch.int64)


def _check_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {value!r}")
    return value


def thresholded_value_histogram(values: torch.Tensor, scores: torch.Tensor, threshold: float, low: int,
                                high: int, *, batch_dims: int = 0, backend: Optional[str] = None) -> torch.Tensor:
    """Counts of each integer value in ``[low, high]`` over the elements whose score exceeds
    ``threshold``: ``counts[b, v - low] = #{i : round(values[b, i]) == v and scores[b, i] > threshold}``.

    Used for DWT's dynamic window selection (RadiomicGAN): ``values`` are HU images, ``scores``
    their Grad-CAM maps and ``threshold`` is ``th_fail``. The C++ kernel counts into per-thread
    private histograms merged at the end; the Triton kernel uses atomic integer adds (exact and
    order-independent, so deterministic).

    Args:
        values: ``(*S)`` or, with ``batch_dims=1``, ``(B, *S)``; integer (int16 HU...) or floating
            (rounded half to even before binning; NaN/inf not counted). Any layout.
        scores: floating, the same shape and device as ``values``.
        threshold: an element is counted when ``score > threshold`` (compared in float64).
        low: first bin's value.
        high: last bin's value (``high >= low``, at most ``2**24`` bins). Values outside
            ``[low, high]`` are not counted.
        batch_dims: 0 (one histogram over everything) or 1 (one per entry of the first dim).
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        int64 ``(high - low + 1,)`` when ``batch_dims == 0``, ``(B, high - low + 1)`` when 1.

    Raises:
        TypeError: ``values`` of an unsupported dtype, ``scores`` not floating, ``low``/``high``
            not ints, ``threshold`` not a real number.
        ValueError: shapes or devices differ, ``high < low``, too many bins, bad ``batch_dims``,
            NaN ``threshold``.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(values, "values")
    require_tensor(scores, "scores")
    if values.dtype not in _VALUE_DTYPES:
        raise TypeError(f"values must be an integer or floating tensor of {_VALUE_DTYPES}, got {values.dtype}")
    require_floating(scores, "scores")
    if scores.shape != values.shape:
        raise ValueError(f"scores must have the shape of values {tuple(values.shape)}, got {tuple(scores.shape)}")
    if scores.device != values.device:
        raise ValueError(f"scores must be on the device of values ({values.device}), got {scores.device}")
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)):
        raise TypeError(f"threshold must be a real number, got {threshold!r}")
    if threshold != threshold:
        raise ValueError(f"threshold must not be NaN (no score would count), got {threshold!r}")
    low, high = _check_int(low, "low"), _check_int(high, "high")
    if high < low or high - low + 1 > MAX_BINS:
        raise ValueError(f"need low <= high with at most {MAX_BINS} bins, got low={low}, high={high}")
    if isinstance(batch_dims, bool) or batch_dims not in (0, 1):
        raise ValueError(f"batch_dims must be 0 or 1, got {batch_dims!r}")
    if batch_dims == 1 and values.dim() == 0:
        raise ValueError("values must have a batch dim (B, ...) when batch_dims=1, got a 0-dim tensor")
    return run_op("thresholded_value_histogram", _thresholded_value_histogram_impl, values, scores,
                  float(threshold), low, high, batch_dims, backend or "")
