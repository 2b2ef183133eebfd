"""Occlusion sweep with Captum 0.9 ``Occlusion`` semantics (Zeiler & Fergus, arXiv:1311.2901).

``occlusion_batch`` builds the occluded copies of an input for a batch of sliding-window
positions (no full-size mask per window); the caller runs the model on them and forms one output
difference per window; ``occlusion_attribution`` turns those differences into per-element
attributions in one pass.

Window geometry, exactly as ``captum/attr/_core/occlusion.py``:

- dim ``k`` of the input (size ``n``, window ``w``, stride ``s``) has
  ``counts[k] = ceil((n - w) / s) + 1`` window positions (Captum's ``shift_counts``); position
  ``j`` starts at ``j * s``.
- A window is cropped at the border: it covers ``[j * s, min(j * s + w, n))``. This happens when
  ``s`` does not divide ``n - w`` (Captum pads its window of ones by a negative amount).
- The linear window index counts positions with the FIRST dim varying fastest
  (``Occlusion._occlusion_mask``): ``index = j_0 + counts[0] * (j_1 + counts[1] * (j_2 + ...))``.
- The attribution of an element is the mean of the differences of the windows covering it
  (Captum's ``use_weights``: total attribution divided by the per-element coverage count).

Beyond Captum: a stride larger than the window (where the window is smaller than the input) is
accepted and leaves gaps. Captum asserts against it; its division would give ``0 / 0 = NaN``
for elements no window covers, and so does :func:`occlusion_attribution`. With such strides the
last position of a dim can even start past the input's end: that window is empty (it occludes
nothing and covers no element).

Naming chain, as for every op: ``occlusion_batch_reference`` / ``occlusion_attribution_reference``
(oracles and fallbacks), ``_occlusion_*_cpu`` (C++), ``_occlusion_*_triton`` (launchers in
``kernels/triton/occlusion.py``), the registered ``torch.ops.mmxai_fast.occlusion_*`` and the
public functions.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import dtype_code, triton_module
from .._validation import (
    exact_ints,
    require_broadcastable,
    require_floating,
    require_integer,
    require_out,
    require_tensor,
)
from .occlusion_windows import OcclusionWindows


def _require_windows(windows) -> None:
    if not isinstance(windows, OcclusionWindows):
        raise TypeError(f"windows must be an OcclusionWindows, got {type(windows).__name__}")


def _windows_from_lists(input_shape: List[int], window: List[int], strides: List[int]) -> OcclusionWindows:
    return OcclusionWindows(tuple(input_shape), tuple(window), tuple(strides))


def _lead_count(shape, windows: OcclusionWindows) -> int:
    return math.prod(shape[: len(shape) - windows.ndim])


# ----------------------------------------------------------------------------- occlusion_batch


def occlusion_batch_reference(x: torch.Tensor, windows: OcclusionWindows, window_ids,
                              baseline=0.0) -> torch.Tensor:
    """Plain-PyTorch oracle of :func:`occlusion_batch`: one slice assignment per window."""
    ids = [int(i) for i in (window_ids.tolist() if isinstance(window_ids, torch.Tensor) else window_ids)]
    fill = torch.as_tensor(baseline, dtype=x.dtype, device=x.device).expand(x.shape)
    out = x.unsqueeze(0).repeat((len(ids),) + (1,) * x.dim())
    lead = (slice(None),) * (x.dim() - windows.ndim)
    for p, index in enumerate(ids):
        box = lead + windows.window_slices(index)
        out[p][box] = fill[box]
    return out


def _baseline_buffer(baseline: torch.Tensor, x: torch.Tensor) -> Tuple[torch.Tensor, bool]:
    """The baseline in x's dtype: a 1-element buffer, or expanded to x's shape (contiguous)."""
    baseline = baseline.to(device=x.device, dtype=x.dtype)
    if baseline.numel() == 1:
        return baseline.reshape(1).contiguous(), False
    return baseline.expand(x.shape).contiguous(), True


def _occlusion_batch_reference_into(x, windows, window_ids, baseline, out=None):
    result = occlusion_batch_reference(x, windows, window_ids, baseline)
    return result if out is None else out.copy_(result)


def _occlusion_batch_cpu(x, windows, window_ids, baseline, out=None):
    x = x.contiguous()
    if out is None:
        out = torch.empty((window_ids.numel(),) + tuple(x.shape), dtype=x.dtype)
    if out.numel():
        ids = window_ids.to(device="cpu", dtype=torch.int64).contiguous()
        fill, full = _baseline_buffer(baseline, x)
        compiled_module().occlusion_batch(
            x.data_ptr(), x.element_size(), _lead_count(x.shape, windows), list(windows.input_shape),
            list(windows.window), list(windows.steps), ids.data_ptr(), ids.numel(),
            fill.data_ptr(), full, out.data_ptr())
    return out


def _occlusion_batch_triton(x, windows, window_ids, baseline, out=None):
    x = x.contiguous()
    if out is None:
        out = torch.empty((window_ids.numel(),) + tuple(x.shape), dtype=x.dtype, device=x.device)
    if out.numel():
        ids = window_ids.to(device=x.device, dtype=torch.int64).contiguous()
        fill, full = _baseline_buffer(baseline, x)
        triton_module("occlusion").occlusion_batch_forward(
            x.view(-1), fill, full, ids, windows._geometry(x.device), math.prod(windows.input_shape),
            out.view(ids.numel(), -1))
    return out


BATCH_BACKENDS = B.OpBackends("occlusion_batch", [
    B.cpu(_occlusion_batch_cpu), B.triton(_occlusion_batch_triton), B.reference(_occlusion_batch_reference_into),
])


def _occlusion_batch_impl(x: torch.Tensor, window_ids: torch.Tensor, baseline: torch.Tensor,
                          input_shape: List[int], window: List[int], strides: List[int],
                          backend: str) -> torch.Tensor:
    windows = _checked_windows(window_ids, input_shape, window, strides)
    # The backend is resolved here, at run time, so torch.compile never traces the selection.
    return BATCH_BACKENDS.select(backend, x.device, x.dtype).impl(x, windows, window_ids, baseline)


def _occlusion_batch_out_impl(x: torch.Tensor, window_ids: torch.Tensor, baseline: torch.Tensor, out: torch.Tensor,
                              input_shape: List[int], window: List[int], strides: List[int], backend: str) -> None:
    windows = _checked_windows(window_ids, input_shape, window, strides)
    if out.numel() and out.untyped_storage().data_ptr() in (x.untyped_storage().data_ptr(),
                                                           baseline.untyped_storage().data_ptr()):
        raise ValueError("out must not share memory with x or baseline")
    BATCH_BACKENDS.select(backend, x.device, x.dtype).impl(x, windows, window_ids, baseline, out)


_occlusion_batch_op = torch.library.custom_op("mmxai_fast::occlusion_batch", mutates_args=())(_occlusion_batch_impl)
_occlusion_batch_out_op = torch.library.custom_op("mmxai_fast::occlusion_batch_out",
                                                  mutates_args=("out",))(_occlusion_batch_out_impl)


@_occlusion_batch_op.register_fake
def _(x, window_ids, baseline, input_shape, window, strides, backend):
    return x.new_empty((window_ids.shape[0],) + tuple(x.shape))


@_occlusion_batch_out_op.register_fake
def _(x, window_ids, baseline, out, input_shape, window, strides, backend):
    return None


def _checked_windows(window_ids, input_shape, window, strides) -> OcclusionWindows:
    windows = _windows_from_lists(input_shape, window, strides)
    if window_ids.numel():
        low, high = int(window_ids.min()), int(window_ids.max())
        if low < 0 or high >= windows.num_windows:
            raise ValueError(f"window_ids must be in [0, {windows.num_windows}), got min {low} and max {high}")
    return windows


def _window_id_tensor(window_ids, windows: OcclusionWindows, device) -> torch.Tensor:
    if isinstance(window_ids, range):
        if len(window_ids) and not (0 <= min(window_ids[0], window_ids[-1])
                                    and max(window_ids[0], window_ids[-1]) < windows.num_windows):
            raise ValueError(f"window_ids must be in [0, {windows.num_windows}), got {window_ids}")
        return torch.arange(window_ids.start, window_ids.stop, window_ids.step, dtype=torch.int64, device=device)
    if isinstance(window_ids, (list, tuple)):
        window_ids = torch.tensor(exact_ints(window_ids, "window_ids"), dtype=torch.int64, device=device)
    if not isinstance(window_ids, torch.Tensor):
        raise TypeError(f"window_ids must be a 1-D integer tensor or a range, got {type(window_ids).__name__}")
    require_integer(window_ids, "window_ids")
    if window_ids.device != device:
        raise ValueError(f"window_ids must be on the device of x ({device}), got {window_ids.device}")
    if window_ids.dim() != 1:
        raise ValueError(f"window_ids must be 1-D (P,), got shape {tuple(window_ids.shape)}")
    return window_ids


def _baseline_tensor(baseline, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        if baseline.is_complex():
            raise TypeError(f"baseline must be a real tensor, got {baseline.dtype}")
        if baseline.device != x.device:
            raise ValueError(f"baseline must be on the same device as x ({x.device}), got {baseline.device}")
        require_broadcastable(baseline.shape, x.shape, "baseline", "x")
        return baseline.to(x.dtype)
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)):
        raise TypeError(f"baseline must be a number or a tensor broadcastable to x, got {type(baseline).__name__}")
    return torch.full((), float(baseline), dtype=x.dtype, device=x.device)


def occlusion_batch(x: torch.Tensor, windows: OcclusionWindows, window_ids, baseline=0.0, *,
                    backend: Optional[str] = None, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Occluded copies of ``x``, one per window of a batch of sliding-window positions.

    Equals Captum's ``x * (1 - mask) + baseline * mask`` for each window's mask, without ever
    building a mask: each output is a copy of ``x`` with the window's box overwritten. (With
    non-finite values the two differ: Captum's products turn ``inf * 0`` into NaN, a copy does
    not: NaN/Inf in ``x`` or ``baseline`` are copied as they are, on every backend.)

    Args:
        x: ``(*lead, *windows.input_shape)`` floating input, any layout; ``lead`` may be empty
            (e.g. ``(N,)`` examples, each occluded at the same box).
        windows: the sweep geometry.
        window_ids: ``(P,)`` integer tensor on ``x.device``, range or list of ints: window
            indices in Captum's order (fractional values are rejected, never truncated).
        baseline: number, or tensor broadcastable to ``x``; cast to ``x.dtype``.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
        out: optional preallocated contiguous ``(P, *x.shape)`` tensor of ``x.dtype`` on
            ``x.device`` (not sharing memory with ``x``), fully overwritten and returned; lets
            callers reuse one buffer across batches (see :func:`mmxai_fast.ops.perturb`).

    Returns:
        ``(P, *x.shape)`` tensor in ``x.dtype`` (``out`` when given): ``out[p]`` is ``x`` with
        the box of window ``window_ids[p]`` (over the trailing dims, for every lead index) set
        to ``baseline``.

    Raises:
        TypeError: ``x`` not a floating tensor, ``windows`` not :class:`OcclusionWindows`, bad
            ``window_ids`` or ``baseline`` type.
        ValueError: trailing dims of ``x`` differ from ``windows.input_shape``, ``window_ids`` not
            1-D, on another device or out of ``[0, num_windows)``, baseline not broadcastable to ``x``, ``out`` of
            the wrong shape, dtype, device or layout or sharing memory with ``x``.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(x, "x")
    require_floating(x, "x")
    _require_windows(windows)
    if x.dim() < windows.ndim or tuple(x.shape[x.dim() - windows.ndim:]) != windows.input_shape:
        raise ValueError(f"x must have shape (*lead, {', '.join(map(str, windows.input_shape))}), "
                         f"got {tuple(x.shape)}")
    ids = _window_id_tensor(window_ids, windows, x.device)
    fill = _baseline_tensor(baseline, x)
    geometry = (list(windows.input_shape), list(windows.window), list(windows.steps))
    if out is None:
        return run_op("occlusion_batch", _occlusion_batch_impl, x, ids, fill, *geometry, backend or "")
    require_out(out, x, (ids.shape[0],) + tuple(x.shape), "P, *x.shape")
    run_op("occlusion_batch_out", _occlusion_batch_out_impl, x, ids, fill, out, *geometry, backend or "")
    return out


# ----------------------------------------------------------------------- occlusion_attribution


def occlusion_attribution_reference(diffs: torch.Tensor, windows: OcclusionWindows) -> torch.Tensor:
    """Plain-PyTorch oracle of :func:`occlusion_attribution`: float64 accumulation, one box slice
    per window, then total / coverage (``0 / 0 = NaN`` where no window covers)."""
    lead = tuple(diffs.shape[:-1])
    flat = diffs.to(torch.float64).reshape(-1, windows.num_windows)
    total = torch.zeros((flat.shape[0],) + windows.input_shape, dtype=torch.float64, device=diffs.device)
    coverage = torch.zeros(windows.input_shape, dtype=torch.float64, device=diffs.device)
    per_row = (flat.shape[0],) + (1,) * windows.ndim
    for index in range(windows.num_windows):
        box = windows.window_slices(index)
        total[(slice(None),) + box] += flat[:, index].view(per_row)
        coverage[box] += 1
    return (total / coverage).reshape(lead + windows.input_shape).to(diffs.dtype)


def _occlusion_attribution_cpu(diffs, windows):
    diffs = diffs.contiguous()
    out = torch.empty(tuple(diffs.shape[:-1]) + windows.input_shape, dtype=diffs.dtype)
    if out.numel():
        compiled_module().occlusion_attribution(
            diffs.data_ptr(), dtype_code(diffs.dtype), out.numel() // math.prod(windows.input_shape),
            list(windows.input_shape), list(windows.window), list(windows.steps), out.data_ptr())
    return out


def _occlusion_attribution_triton(diffs, windows):
    diffs = diffs.contiguous()
    out = torch.empty(tuple(diffs.shape[:-1]) + windows.input_shape, dtype=diffs.dtype, device=diffs.device)
    if out.numel():
        lead = out.numel() // math.prod(windows.input_shape)
        triton_module("occlusion").occlusion_attribution_forward(
            diffs.view(lead, windows.num_windows), windows._geometry(diffs.device), windows._max_cover,
            out.view(lead, -1))
    return out


ATTRIBUTION_BACKENDS = B.OpBackends("occlusion_attribution", [
    B.cpu(_occlusion_attribution_cpu), B.triton(_occlusion_attribution_triton),
    B.reference(occlusion_attribution_reference),
])


def _occlusion_attribution_impl(diffs: torch.Tensor, input_shape: List[int], window: List[int],
                                strides: List[int], backend: str) -> torch.Tensor:
    windows = _windows_from_lists(input_shape, window, strides)
    return ATTRIBUTION_BACKENDS.select(backend, diffs.device, diffs.dtype).impl(diffs, windows)


_occlusion_attribution_op = torch.library.custom_op("mmxai_fast::occlusion_attribution",
                                                    mutates_args=())(_occlusion_attribution_impl)


@_occlusion_attribution_op.register_fake
def _(diffs, input_shape, window, strides, backend):
    return diffs.new_empty(tuple(diffs.shape[:-1]) + tuple(input_shape))


def occlusion_attribution(diffs: torch.Tensor, windows: OcclusionWindows, *, backend: Optional[str] = None) -> torch.Tensor:
    """Per-element occlusion attribution from per-window output differences, in one pass.

    ``out[..., i]`` is the mean of ``diffs[..., w]`` over the windows ``w`` covering element
    ``i``, which is what Captum's ``Occlusion`` returns given the same differences
    (``eval(x) - eval(occluded x)``). Coverage is separable (product of per-dim counts), so every
    element visits only its covering windows; sums are taken in float64 (C++) or float32/float64
    (Triton) and cast to ``diffs.dtype``.

    Elements no window covers (only possible when a stride exceeds its window, which Captum
    rejects) get ``0 / 0 = NaN``, as Captum's ``total / weights`` would. A NaN or infinite
    difference makes every element its window covers NaN or infinite, on every backend. Captum always returns
    float32 (``total.float() / weights``); here the output keeps ``diffs.dtype``.

    Args:
        diffs: ``(*lead, windows.num_windows)`` floating, any layout; e.g. ``lead = (N,)``
            examples.
        windows: the sweep geometry.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``(*lead, *windows.input_shape)`` tensor in ``diffs.dtype``.

    Raises:
        TypeError: ``diffs`` not a floating tensor, ``windows`` not :class:`OcclusionWindows`.
        ValueError: last dim of ``diffs`` is not ``windows.num_windows``.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(diffs, "diffs")
    require_floating(diffs, "diffs")
    _require_windows(windows)
    if diffs.dim() < 1 or diffs.shape[-1] != windows.num_windows:
        raise ValueError(f"diffs must have shape (*lead, num_windows={windows.num_windows}), got {tuple(diffs.shape)}")
    return run_op("occlusion_attribution", _occlusion_attribution_impl, diffs, list(windows.input_shape),
                  list(windows.window), list(windows.steps), backend or "")
