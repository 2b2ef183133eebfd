"""Support kernels for Shapley value sampling (Strumbelj & Kononenko; Captum ``ShapleyValueSampling``).

Shapley value sampling walks random feature permutations. For permutation ``perms[p]`` the model
is evaluated on the coalitions made of its first ``j`` features, ``j = 0 .. F`` (``j = 0``: every
feature removed, i.e. the baseline; ``j = F``: the unperturbed input), and feature ``perms[p, j]``
is credited with the marginal ``f(first j + 1) - f(first j)``. Averaged over permutations, the
marginals estimate the Shapley values.

Captum evaluates the baseline once and then adds the features of each permutation one at a time;
the ops here fit that walk:

- :func:`random_permutations`: ``[P, F]`` permutations, optionally antithetic (each permutation
  followed by its reverse, a cheap variance reduction).
- :func:`shapley_prefix_rows`: the ``(perm_index, prefix_size)`` rows of the walk, in Captum's
  order (permutation-major, prefix size ascending).
- :func:`shapley_coalitions`: the ``[R, F]`` keep masks of those rows (which features come from
  the input, the others come from the baseline), for batched model evaluation.
- :func:`shapley_accumulate`: running sums (and sums of squares) of the marginals per feature,
  from the ``[P, F + 1, *T]`` model outputs; deterministic (one owner per feature, no atomics).
- :func:`shapley_stats`: mean and standard error from the running sums.

Naming chain per kernel op: ``*_reference`` (oracle and fallback), ``_*_cpu`` (C++ in
``csrc/cpu/shapley_cpu.cpp``), ``_*_triton`` (``kernels/triton/shapley.py``), the registered
``torch.ops.mmxai_fast.*`` and the public function.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import cpu_supports, dtype_code, triton_module
from .._validation import (
    int_at_least,
    require_disjoint,
    require_floating,
    require_integer,
    require_ndim,
    require_same_device,
    require_tensor,
)
from .shapley_sampling import (  # public here too
    random_permutations,
    shapley_prefix_rows,
)

__all__ = [
    "random_permutations",
    "shapley_prefix_rows",
    "shapley_coalitions",
    "shapley_coalitions_reference",
    "shapley_accumulate",
    "shapley_accumulate_reference",
    "shapley_stats",
]


def _ranks_reference(perms: torch.Tensor) -> torch.Tensor:
    """rank[p, perms[p, j]] = j. Zero-initialised so a row that is not a permutation stays in range."""
    num_features = perms.shape[1]
    positions = torch.arange(num_features, dtype=torch.int64, device=perms.device).expand_as(perms)
    return torch.zeros_like(perms, dtype=torch.int64).scatter_(1, perms.long(), positions)


def _check_perms(perms: torch.Tensor, full: bool) -> None:
    """Data-dependent checks, run inside the custom op bodies (before any kernel)."""
    if perms.numel() == 0:
        return
    num_features = perms.shape[1]
    low, high = int(perms.min()), int(perms.max())
    if low < 0 or high >= num_features:
        raise ValueError(f"perms values must be in [0, {num_features}), got min {low} and max {high}")
    if full:
        seen = torch.zeros(perms.shape, dtype=torch.bool, device=perms.device).scatter_(1, perms.long(), True)
        bad = (~seen.all(dim=1)).nonzero()
        if bad.numel():
            raise ValueError(f"perms rows must be permutations of 0..{num_features - 1}; "
                             f"row {int(bad[0, 0])} repeats a value")


# ----------------------------------------------------------------------------- coalitions


def shapley_coalitions_reference(perms: torch.Tensor, perm_index: torch.Tensor,
                                 prefix_size: torch.Tensor) -> torch.Tensor:
    """Plain-PyTorch oracle: ``keep[r, f] = rank_{perm_index[r]}(f) < prefix_size[r]``.

    Materialises an ``[R, F]`` int64 gather of the ranks (8x the output), fine for an oracle.
    """
    ranks = _ranks_reference(perms)
    return ranks[perm_index.long()] < prefix_size.long().unsqueeze(1)


def _index_vectors(perm_index, prefix_size):
    return perm_index.long().contiguous(), prefix_size.long().contiguous()


def _shapley_coalitions_cpu(perms, perm_index, prefix_size):
    perms = perms.long().contiguous()
    perm_index, prefix_size = _index_vectors(perm_index, prefix_size)
    num_perms, num_features = perms.shape
    out = torch.empty((perm_index.numel(), num_features), dtype=torch.bool)
    if out.numel():
        compiled_module().shapley_coalitions(perms.data_ptr(), num_perms, num_features, perm_index.data_ptr(),
                                             prefix_size.data_ptr(), perm_index.numel(), out.data_ptr())
    return out


def _shapley_coalitions_triton(perms, perm_index, prefix_size):
    perms = perms.long().contiguous()
    perm_index, prefix_size = _index_vectors(perm_index, prefix_size)
    out = torch.empty((perm_index.numel(), perms.shape[1]), dtype=torch.bool, device=perms.device)
    if out.numel():
        kernels = triton_module("shapley")
        kernels.shapley_coalitions_forward(kernels.shapley_ranks(perms), perm_index, prefix_size,
                                           out.view(torch.uint8))
    return out


COALITION_BACKENDS = B.OpBackends("shapley_coalitions", [
    B.cpu(_shapley_coalitions_cpu), B.triton(_shapley_coalitions_triton), B.reference(shapley_coalitions_reference),
])


def _shapley_coalitions_impl(perms: torch.Tensor, perm_index: torch.Tensor, prefix_size: torch.Tensor,
                             check_permutations: bool, backend: str) -> torch.Tensor:
    _check_perms(perms, check_permutations)
    num_perms, num_features = perms.shape
    if perm_index.numel():
        low, high = int(perm_index.min()), int(perm_index.max())
        if low < 0 or high >= num_perms:
            raise ValueError(f"perm_index values must be in [0, {num_perms}), got min {low} and max {high}")
        low, high = int(prefix_size.min()), int(prefix_size.max())
        if low < 0 or high > num_features:
            raise ValueError(f"prefix_size values must be in [0, {num_features}], got min {low} and max {high}")
    # The backend is resolved here, at run time, so torch.compile never traces the selection.
    return COALITION_BACKENDS.select(backend, perms.device, perms.dtype).impl(perms, perm_index, prefix_size)


_shapley_coalitions_op = torch.library.custom_op("mmxai_fast::shapley_coalitions",
                                                 mutates_args=())(_shapley_coalitions_impl)


@_shapley_coalitions_op.register_fake
def _(perms, perm_index, prefix_size, check_permutations, backend):
    return perms.new_empty((perm_index.shape[0], perms.shape[1]), dtype=torch.bool)


def _require_perms(perms) -> None:
    require_tensor(perms, "perms")
    require_integer(perms, "perms")
    require_ndim(perms, "perms", 2, "[P, F]")


def shapley_coalitions(perms: torch.Tensor, perm_index: torch.Tensor, prefix_size: torch.Tensor, *,
                       check_permutations: bool = False, backend: Optional[str] = None) -> torch.Tensor:
    """Keep masks of permutation prefixes: row ``r`` keeps the first ``prefix_size[r]`` features
    of permutation ``perm_index[r]``.

    ``keep[r, f] = rank_{perm_index[r]}(f) < prefix_size[r]`` where ``rank_p`` is the inverse of
    ``perms[p]``; the ranks are computed once per call and each output row is one vectorised
    comparison (no Python loop, no memory beyond ``[P, F]`` ranks and the ``[R, F]`` output).

    Args:
        perms: ``[P, F]`` integer tensor, each row a permutation of ``0 .. F - 1``. Values are
            always checked to lie in ``[0, F)``; rows that repeat a value give unspecified
            (but in-bounds) masks unless ``check_permutations`` is set.
        perm_index: ``[R]`` integer tensor, values in ``[0, P)``.
        prefix_size: ``[R]`` integer tensor, values in ``[0, F]``.
        check_permutations: also check that every row of ``perms`` is a permutation (O(P F)).
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``[R, F]`` bool tensor on ``perms``' device; True = the feature is present (taken from the
        input), False = removed (taken from the baseline).

    Raises:
        TypeError: non-tensor or non-integer arguments.
        ValueError: wrong ranks or lengths, different devices, values out of range, or (with
            ``check_permutations``) a row that is not a permutation.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    _require_perms(perms)
    for name, vec in (("perm_index", perm_index), ("prefix_size", prefix_size)):
        require_tensor(vec, name)
        require_integer(vec, name)
        require_ndim(vec, name, 1, "[R]")
        require_same_device("perms", perms, name, vec)
    if perm_index.shape[0] != prefix_size.shape[0]:
        raise ValueError(f"perm_index and prefix_size must have the same length, got "
                         f"{perm_index.shape[0]} and {prefix_size.shape[0]}")
    return run_op("shapley_coalitions", _shapley_coalitions_impl, perms, perm_index, prefix_size,
                  bool(check_permutations), backend or "")


# ----------------------------------------------------------------------------- accumulation


def _compute_dtype(outputs_dtype: torch.dtype, sums_dtype: torch.dtype) -> torch.dtype:
    """Marginals are formed in float64 if either side is float64, else float32."""
    return torch.float64 if torch.float64 in (outputs_dtype, sums_dtype) else torch.float32


def shapley_accumulate_reference(outputs: torch.Tensor, perms: torch.Tensor, sums: torch.Tensor,
                                 sumsq: Optional[torch.Tensor] = None) -> None:
    """Plain-PyTorch oracle: ``sums.index_add_(0, perms.flatten(), marginals)`` (and ``sumsq``
    with the squared marginals), in place."""
    compute = _compute_dtype(outputs.dtype, sums.dtype)
    values = outputs.to(compute)
    marginals = (values[:, 1:] - values[:, :-1]).flatten(0, 1)
    index = perms.long().flatten()
    sums.index_add_(0, index, marginals.to(sums.dtype))
    if sumsq is not None:
        sumsq.index_add_(0, index, (marginals * marginals).to(sumsq.dtype))


def _flat_accumulators(sums, sumsq):
    """Contiguous ``[F, Tn]`` views of the accumulators (copies when they are not contiguous)."""
    flat = [None if t is None else t.contiguous().view(t.shape[0], math.prod(t.shape[1:])) for t in (sums, sumsq)]
    return flat[0], flat[1]


def _copy_back(sums, sumsq, flat_sums, flat_sumsq):
    for target, flat in ((sums, flat_sums), (sumsq, flat_sumsq)):
        if target is not None and flat.data_ptr() != target.data_ptr():
            target.copy_(flat.view(target.shape))


def _shapley_accumulate_cpu(outputs, perms, sums, sumsq):
    outputs = outputs.contiguous()
    perms = perms.long().contiguous()
    flat_sums, flat_sumsq = _flat_accumulators(sums, sumsq)
    num_perms, num_features = perms.shape
    if num_perms and flat_sums.numel():
        compiled_module().shapley_accumulate(
            outputs.data_ptr(), dtype_code(outputs.dtype), perms.data_ptr(), num_perms, num_features,
            flat_sums.shape[1], flat_sums.data_ptr(), dtype_code(sums.dtype),
            0 if flat_sumsq is None else flat_sumsq.data_ptr())
    _copy_back(sums, sumsq, flat_sums, flat_sumsq)


def _shapley_accumulate_triton(outputs, perms, sums, sumsq):
    outputs = outputs.contiguous()
    perms = perms.long().contiguous()
    flat_sums, flat_sumsq = _flat_accumulators(sums, sumsq)
    if perms.shape[0] and flat_sums.numel():
        kernels = triton_module("shapley")
        kernels.shapley_accumulate_forward(outputs.view(perms.shape[0], perms.shape[1] + 1, flat_sums.shape[1]),
                                           kernels.shapley_ranks(perms), flat_sums, flat_sumsq)
    _copy_back(sums, sumsq, flat_sums, flat_sumsq)


def _cpu_accumulate_limits(outputs, sums) -> List[str]:
    if not (cpu_supports(outputs.dtype) and cpu_supports(sums.dtype)):
        return [f"cpu kernel does not handle {outputs.dtype} -> {sums.dtype}"]
    return []


ACCUMULATE_BACKENDS = B.OpBackends("shapley_accumulate", [
    B.cpu(_shapley_accumulate_cpu, limits=_cpu_accumulate_limits), B.triton(_shapley_accumulate_triton),
    B.reference(shapley_accumulate_reference),
])


def _shapley_accumulate_impl(outputs: torch.Tensor, perms: torch.Tensor, sums: torch.Tensor,
                             sumsq: Optional[torch.Tensor], check_permutations: bool, backend: str) -> None:
    # Memory checks here, not in the public function: torch.compile cannot trace storage pointers.
    for name, t in (("outputs", outputs), ("perms", perms)) + ((("sumsq", sumsq),) if sumsq is not None else ()):
        require_disjoint(name, t, "sums", sums)
    if sumsq is not None:
        require_disjoint("outputs", outputs, "sumsq", sumsq)
    _check_perms(perms, check_permutations)
    chosen = ACCUMULATE_BACKENDS.select(backend, outputs.device, outputs.dtype, (outputs, sums))
    chosen.impl(outputs, perms, sums, sumsq)


_shapley_accumulate_op = torch.library.custom_op("mmxai_fast::shapley_accumulate",
                                                 mutates_args=("sums", "sumsq"))(_shapley_accumulate_impl)


@_shapley_accumulate_op.register_fake
def _(outputs, perms, sums, sumsq, check_permutations, backend):
    return None


def _check_accumulate_args(outputs, perms, sums, sumsq) -> None:
    require_tensor(outputs, "outputs")
    require_floating(outputs, "outputs")
    _require_perms(perms)
    num_perms, num_features = perms.shape
    if outputs.dim() < 2 or tuple(outputs.shape[:2]) != (num_perms, num_features + 1):
        raise ValueError(f"outputs must have shape [P, F + 1, *T] = [{num_perms}, {num_features + 1}, *T] "
                         f"(column 0: all features removed), got {tuple(outputs.shape)}")
    target = (num_features,) + tuple(outputs.shape[2:])
    for name, acc in (("sums", sums), ("sumsq", sumsq)):
        if acc is None and name == "sumsq":
            continue
        require_tensor(acc, name)
        require_floating(acc, name)
        if tuple(acc.shape) != target:
            raise ValueError(f"{name} must have shape [F, *T] = {list(target)}, got {tuple(acc.shape)}")
        require_same_device("outputs", outputs, name, acc)
    require_same_device("outputs", outputs, "perms", perms)
    if sumsq is not None:
        if sumsq.dtype != sums.dtype:
            raise TypeError(f"sumsq must have the dtype of sums ({sums.dtype}), got {sumsq.dtype}")


def shapley_accumulate(outputs: torch.Tensor, perms: torch.Tensor, sums: torch.Tensor,
                       sumsq: Optional[torch.Tensor] = None, *, check_permutations: bool = False,
                       backend: Optional[str] = None) -> None:
    """Add each feature's marginal contributions along the permutations to running sums, in place.

    ``sums[perms[p, j]] += outputs[p, j + 1] - outputs[p, j]`` for every ``p, j``, and likewise
    ``sumsq`` with the squared marginal. Each feature is owned by one program that reads its rank
    in every permutation and adds the marginals in permutation order: deterministic, no atomics.
    Marginals are formed in float64 if ``outputs`` or ``sums`` is float64, else float32, and
    summed in that precision before one addition into ``sums`` (so float64 sums of float32
    outputs are exact per marginal).

    Args:
        outputs: ``[P, F + 1, *T]`` floating; ``outputs[p, j]`` is the model output on the
            coalition of the first ``j`` features of ``perms[p]`` (column 0: all removed, i.e. the
            baseline; column ``F``: the full input). ``T`` may be empty.
        perms: ``[P, F]`` integer tensor, each row a permutation of ``0 .. F - 1`` (values are
            checked to lie in ``[0, F)``; the full check is ``check_permutations``).
        sums: ``[F, *T]`` floating accumulator, updated in place; any floating dtype.
        sumsq: optional ``[F, *T]`` accumulator of squared marginals, dtype of ``sums``.
        check_permutations: also check that every row of ``perms`` is a permutation (O(P F)).
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Raises:
        TypeError: non-tensor arguments, non-floating ``outputs``/``sums``, integer-less ``perms``,
            or ``sumsq`` of another dtype than ``sums``.
        ValueError: shape mismatches, different devices, ``sums``/``sumsq`` sharing memory (even
            partly) with each other or with ``outputs``/``perms``, or ``perms`` values out of range.

    NaN/Inf: a NaN or infinite output makes the marginals that use it (and so the sums of the
    features they credit) NaN or infinite on every backend; other features are unaffected.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    _check_accumulate_args(outputs, perms, sums, sumsq)
    run_op("shapley_accumulate", _shapley_accumulate_impl, outputs, perms, sums, sumsq, bool(check_permutations),
           backend or "")


# ----------------------------------------------------------------------------- statistics


def shapley_stats(sums: torch.Tensor, sumsq: torch.Tensor, count: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """Shapley value estimates and their standard errors from the running sums.

    ``mean = sums / count``; ``stderr = sqrt(max(var, 0) / count)`` with the unbiased sample
    variance ``var = (sumsq - sums * mean) / (count - 1)``. The clamp absorbs the rounding that
    can make ``var`` slightly negative; keep the sums in float64 when the marginals are large
    compared with their spread (the one-pass formula cancels). With ``count == 1`` the variance
    is undefined and ``stderr`` is ``inf`` everywhere.

    With antithetic permutations the marginals of a pair are not independent; the i.i.d.
    standard error then overstates the uncertainty when the pair is negatively correlated.

    Args:
        sums: ``[F, *T]`` floating sums of the marginals.
        sumsq: ``[F, *T]`` floating sums of the squared marginals.
        count: number of permutations accumulated, ``>= 1``.

    Returns:
        ``(mean, stderr)``, both ``[F, *T]`` in the promoted dtype of ``sums`` and ``sumsq``.

    Raises:
        TypeError: non-tensor or non-floating ``sums``/``sumsq``.
        ValueError: shape mismatch or ``count < 1``.
    """
    for name, acc in (("sums", sums), ("sumsq", sumsq)):
        require_tensor(acc, name)
        require_floating(acc, name)
    if sums.shape != sumsq.shape:
        raise ValueError(f"sumsq must have the shape of sums {tuple(sums.shape)}, got {tuple(sumsq.shape)}")
    int_at_least(count, "count", 1)
    mean = sums / count
    if count == 1:
        return mean, torch.full_like(mean, math.inf)
    var = (sumsq - sums * mean) / (count - 1)
    return mean, (var.clamp(min=0) / count).sqrt()
