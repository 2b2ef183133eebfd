"""Batched superpixel perturbation: ``perturb``.

Perturbation attributions (feature ablation, Shapley sampling, LIME, KernelSHAP) evaluate a model
on many copies of the input in which some features (superpixels / supervoxels, given as an
integer ``feature_mask``) are replaced by a baseline. ``perturb`` builds ``B`` such copies at once::

    out[b, i] = x[i] if keep[b, feature_mask[i]] else baseline[i]

Captum builds each row as ``x * (1 - m) + baseline * m`` with one full-size float mask per row;
here the ``[B, F]`` keep table is tiny, so one pass over the volume writes all ``B`` rows.

Naming chain: ``perturb_reference`` (oracle and fallback), ``_perturb_cpu`` (C++),
``_perturb_triton`` (Triton launcher in ``kernels/triton/perturb.py``), the registered
``torch.ops.mmxai_fast.perturb`` and the public ``perturb``.
"""
from __future__ import annotations

from numbers import Real
from typing import List, Optional, Sequence, Tuple, Union

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import dtype_code, triton_module
from .._validation import (
    require_broadcastable,
    require_floating,
    require_ndim,
    require_out,
    require_same_device,
    require_tensor,
)

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
MASK_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

Baseline = Union[float, int, torch.Tensor]


def perturb_reference(x: torch.Tensor, feature_mask: torch.Tensor, keep: torch.Tensor,
                      baseline: Baseline = 0.0) -> torch.Tensor:
    """Plain-PyTorch oracle of :func:`perturb` (same arguments, no validation)."""
    baseline = torch.as_tensor(baseline, device=x.device).to(x.dtype)
    # Align the mask's dims with x's so keep's leading B dim cannot pair with a dim of x.
    mask = feature_mask.long().reshape((1,) * (x.dim() - feature_mask.dim()) + tuple(feature_mask.shape))
    out = torch.where(keep[:, mask], x, baseline)
    return out.expand((keep.shape[0],) + tuple(x.shape)).contiguous()


def _raise_if_out_of_range(lo: int, hi: int, num_features: int) -> None:
    if lo < 0 or hi >= num_features:
        raise ValueError(
            f"feature_mask ids must be in [0, {num_features}) (F = keep.shape[1]), got min {lo}, max {hi}")


def _check_ids(feature_mask: torch.Tensor, num_features: int) -> None:
    """The data-dependent range check: one min/max pass over the (unexpanded) mask."""
    if feature_mask.numel() == 0:
        return
    lo, hi = torch.aminmax(feature_mask)
    _raise_if_out_of_range(int(lo), int(hi), num_features)


def _coalesce(shape: Sequence[int], strides: Sequence[Sequence[int]]) -> Tuple[List[int], List[List[int]]]:
    """Drop size-1 dims and merge adjacent dims that are contiguous in every tensor.

    Returns ``(sizes, per-tensor strides)`` describing the same elements in the same order with
    as few dims as possible (at least one), so the C++ inner loop runs as long as possible.
    """
    sizes: List[int] = []
    merged: List[List[int]] = [[] for _ in strides]
    for d, size in enumerate(shape):
        if size == 1:
            continue
        current = [s[d] for s in strides]
        if sizes and all(m[-1] == c * size for m, c in zip(merged, current)):
            sizes[-1] *= size
            for m, c in zip(merged, current):
                m[-1] = c
        else:
            sizes.append(size)
            for m, c in zip(merged, current):
                m.append(c)
    if not sizes:
        return [1], [[0] for _ in strides]
    return sizes, merged


def _new_output(x, keep):
    return torch.empty((keep.shape[0],) + tuple(x.shape), dtype=x.dtype, device=x.device)


def _perturb_cpu(x, feature_mask, keep, baseline, validate_ids, out=None):
    num_rows, num_features = keep.shape
    out = _new_output(x, keep) if out is None else out
    if x.numel() == 0:
        if validate_ids:
            _check_ids(feature_mask, num_features)
        return out
    # Broadcast views (stride 0), never copies: the kernel walks the strides itself.
    mask = feature_mask.expand(x.shape)
    base = baseline.expand(x.shape)
    sizes, (x_strides, m_strides, b_strides) = _coalesce(x.shape, (x.stride(), mask.stride(), base.stride()))
    keep = keep.contiguous()
    # The kernel checks the ids' range in the same pass (always: it never indexes keep with a bad
    # id), so validate_ids has nothing to skip here.
    lo, hi = compiled_module().perturb(
        x.data_ptr(), dtype_code(x.dtype), mask.data_ptr(), dtype_code(mask.dtype), base.data_ptr(),
        sizes, x_strides, m_strides, b_strides, keep.data_ptr(), num_rows, num_features, out.data_ptr())
    _raise_if_out_of_range(lo, hi, num_features)
    return out


def _perturb_triton(x, feature_mask, keep, baseline, validate_ids, out=None):
    num_rows, num_features = keep.shape
    if validate_ids:
        _check_ids(feature_mask, num_features)
    out = _new_output(x, keep) if out is None else out
    if out.numel() == 0:
        return out
    # The kernel walks flat contiguous buffers: broadcast inputs are materialised (cheap next to
    # the B-times larger output); a one-element baseline stays a single value.
    flat = lambda t: t.expand(x.shape).contiguous().view(-1)  # noqa: E731
    base = baseline.reshape(1) if baseline.numel() == 1 else flat(baseline)
    triton_module("perturb").perturb_forward(
        flat(x), flat(feature_mask), keep.contiguous().view(torch.uint8), base, out.view(num_rows, -1))
    return out


def _perturb_reference_checked(x, feature_mask, keep, baseline, validate_ids, out=None):
    if validate_ids:
        _check_ids(feature_mask, keep.shape[1])
    result = perturb_reference(x, feature_mask, keep, baseline)
    return result if out is None else out.copy_(result)


BACKENDS = B.OpBackends("perturb", [
    B.cpu(_perturb_cpu, dtypes=FLOAT_DTYPES),
    B.triton(_perturb_triton, dtypes=FLOAT_DTYPES),
    B.reference(_perturb_reference_checked),
])


def _perturb_impl(x: torch.Tensor, feature_mask: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor,
                  validate_ids: bool, backend: str) -> torch.Tensor:
    # The backend is resolved here, at run time, so torch.compile never traces the selection.
    return BACKENDS.select(backend, x.device, x.dtype).impl(x, feature_mask, keep, baseline, validate_ids)


def _perturb_out_impl(x: torch.Tensor, feature_mask: torch.Tensor, keep: torch.Tensor, baseline: torch.Tensor,
                      out: torch.Tensor, validate_ids: bool, backend: str) -> None:
    _check_out_is_separate(out, x, baseline)
    BACKENDS.select(backend, x.device, x.dtype).impl(x, feature_mask, keep, baseline, validate_ids, out)


_perturb_op = torch.library.custom_op("mmxai_fast::perturb", mutates_args=())(_perturb_impl)
_perturb_out_op = torch.library.custom_op("mmxai_fast::perturb_out", mutates_args=("out",))(_perturb_out_impl)


@_perturb_op.register_fake
def _(x, feature_mask, keep, baseline, validate_ids, backend):
    return x.new_empty((keep.shape[0],) + tuple(x.shape))


@_perturb_out_op.register_fake
def _(x, feature_mask, keep, baseline, out, validate_ids, backend):
    return None


def _baseline_tensor(baseline: Baseline, x: torch.Tensor) -> torch.Tensor:
    if isinstance(baseline, torch.Tensor):
        if baseline.is_complex():
            raise TypeError(f"baseline must be a real tensor or number, got dtype {baseline.dtype}")
        require_same_device("x", x, "baseline", baseline)
        require_broadcastable(baseline.shape, x.shape, "baseline", "x")
        return baseline.to(x.dtype)
    if not isinstance(baseline, Real):
        raise TypeError(f"baseline must be a real number or a torch.Tensor, got {type(baseline).__name__}")
    return torch.full((), float(baseline), dtype=x.dtype, device=x.device)


def _check_out(out: torch.Tensor, x: torch.Tensor, keep: torch.Tensor) -> None:
    require_out(out, x, (keep.shape[0],) + tuple(x.shape), "B, *x.shape")


def _check_out_is_separate(out: torch.Tensor, x: torch.Tensor, baseline: torch.Tensor) -> None:
    """Run inside the op (``torch.compile`` cannot trace storage pointers)."""
    if out.numel():
        storage = out.untyped_storage().data_ptr()
        for name, t in (("x", x), ("baseline", baseline)):
            if t.numel() and t.untyped_storage().data_ptr() == storage:
                raise ValueError(f"out must not share memory with {name}")


def perturb(x: torch.Tensor, feature_mask: torch.Tensor, keep: torch.Tensor, baseline: Baseline = 0.0, *,
            backend: Optional[str] = None, validate_ids: bool = True, out: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Build ``B`` perturbed copies of ``x`` in one pass: features off in ``keep`` get the baseline.

    ``out[b, i] = x[i] if keep[b, feature_mask[i]] else baseline[i]``.

    Args:
        x: ``(*S)`` floating input (float16, bfloat16, float32, float64), any layout.
        feature_mask: integer ids (uint8, int8, int16, int32, int64) of shape broadcastable to
            ``(*S)`` (e.g. ``(1, D, H, W)`` shared by the channels of a ``(C, D, H, W)`` input);
            ids must lie in ``[0, F)``, unused ids are fine.
        keep: ``(B, F)`` bool, ``keep[b, f]`` keeps feature ``f`` in copy ``b``. ``B`` may be 0.
        baseline: value of removed features: a real number or a tensor broadcastable to ``(*S)``,
            cast to ``x.dtype``.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.
        validate_ids: check that the ids lie in ``[0, F)``. Callers that validated the mask once
            (the attribution engine, which calls ``perturb`` many times with the same mask) pass
            ``False`` to skip the extra min/max pass (and, on a GPU, its device sync). The cpu
            kernel checks the ids within its single pass regardless; the Triton kernel never
            reads ``keep`` out of bounds, so a bad id with ``validate_ids=False`` gives undefined
            values, never a crash.
        out: optional preallocated contiguous ``(B, *S)`` tensor of ``x.dtype`` on ``x.device``
            (not sharing memory with ``x`` or ``baseline``) written in place and returned:
            callers building many batches of the same size (the attribution engine) reuse one
            buffer instead of allocating (and page-faulting) a fresh ``B``-times-input tensor
            per batch.

    Returns:
        ``(B, *S)`` contiguous tensor of ``x.dtype`` on ``x.device`` (``out`` when given).

    NaN/Inf: values are copied, never combined, so NaN/Inf in ``x`` or ``baseline`` appear
    unchanged exactly where they are selected, on every backend (Captum's ``x * (1 - m) +
    baseline * m`` would turn ``inf * 0`` into NaN).

    Raises:
        TypeError: ``x`` not floating, ``feature_mask`` not integer, ``keep`` not bool, ``baseline``
            neither a real number nor a real tensor.
        ValueError: ``keep`` not 2-D, ``feature_mask`` or ``baseline`` not broadcastable to ``x``,
            tensors on different devices, ids outside ``[0, F)`` (message gives min, max and F),
            ``out`` of the wrong shape, dtype, device or layout or sharing memory with an input.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(x, "x")
    require_floating(x, "x")
    require_tensor(feature_mask, "feature_mask")
    if feature_mask.dtype not in MASK_DTYPES:
        raise TypeError(f"feature_mask must have an integer dtype of {MASK_DTYPES}, got {feature_mask.dtype}")
    require_tensor(keep, "keep")
    if keep.dtype != torch.bool:
        raise TypeError(f"keep must be a bool tensor of shape (B, F), got dtype {keep.dtype}")
    require_ndim(keep, "keep", 2, "(B, F)")
    require_same_device("x", x, "feature_mask", feature_mask)
    require_same_device("x", x, "keep", keep)
    require_broadcastable(feature_mask.shape, x.shape, "feature_mask", "x")
    baseline = _baseline_tensor(baseline, x)
    if out is None:
        return run_op("perturb", _perturb_impl, x, feature_mask, keep, baseline, bool(validate_ids), backend or "")
    _check_out(out, x, keep)
    run_op("perturb_out", _perturb_out_impl, x, feature_mask, keep, baseline, out, bool(validate_ids), backend or "")
    return out
