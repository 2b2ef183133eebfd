"""``codeword_histogram``: counts of codeword indices per volume (the deep-radiomics feature vector).

Naming chain: ``codeword_histogram_reference`` (oracle and fallback), ``_codeword_histogram_cpu``
(C++ ``csrc/cpu/codeword_histogram_cpu.cpp``), ``_codeword_histogram_triton``
(``kernels/triton/codeword_histogram.py``), the registered ``torch.ops.mmxai_fast.codeword_histogram``
and the public ``codeword_histogram``.
"""
from __future__ import annotations

from typing import Optional

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import dtype_code, triton_module
from .._validation import int_at_least, require_integer, require_tensor


def _as_batches(indices: torch.Tensor, batch_dims: int) -> torch.Tensor:
    """``indices`` as ``[B, L]`` (``B = 1`` when ``batch_dims == 0``)."""
    batch = indices.shape[0] if batch_dims else 1
    return indices.reshape(batch, -1) if indices.numel() else indices.new_zeros((batch, 0))


def codeword_histogram_reference(indices: torch.Tensor, num_codewords: int, batch_dims: int = 0) -> torch.Tensor:
    """Plain-PyTorch oracle: ``scatter_add`` of ones into ``[B, K]`` counts.

    Args:
        indices: integer, values in ``[0, num_codewords)``; ``(B, ...)`` when ``batch_dims == 1``.
        num_codewords: ``K``.
        batch_dims: 0 or 1.

    Returns:
        int64 ``(K,)`` (``batch_dims == 0``) or ``(B, K)``.
    """
    flat = _as_batches(indices, batch_dims).to(torch.int64)
    counts = torch.zeros((flat.shape[0], num_codewords), dtype=torch.int64, device=indices.device)
    counts.scatter_add_(1, flat, torch.ones_like(flat))
    return counts if batch_dims else counts[0]


def _histogram_kernel_input(indices, batch_dims):
    flat = _as_batches(indices, batch_dims)
    if flat.dtype not in (torch.int32, torch.int64):
        flat = flat.to(torch.int64)
    return flat.contiguous()


def _codeword_histogram_cpu(indices, num_codewords, batch_dims):
    flat = _histogram_kernel_input(indices, batch_dims)
    counts = torch.empty((flat.shape[0], num_codewords), dtype=torch.int64)
    compiled_module().codeword_histogram(flat.data_ptr(), dtype_code(flat.dtype), flat.shape[0],
                                         flat.shape[1], num_codewords, counts.data_ptr())
    return counts if batch_dims else counts[0]


def _codeword_histogram_triton(indices, num_codewords, batch_dims):
    flat = _histogram_kernel_input(indices, batch_dims)
    counts = torch.zeros((flat.shape[0], num_codewords), dtype=torch.int64, device=indices.device)
    if flat.numel():
        triton_module("codeword_histogram").codeword_histogram_forward(flat, counts)
    return counts if batch_dims else counts[0]


BACKENDS = B.OpBackends("codeword_histogram", [
    B.cpu(_codeword_histogram_cpu), B.triton(_codeword_histogram_triton),
    B.reference(codeword_histogram_reference),
])


def _check_index_range(indices: torch.Tensor, num_codewords: int) -> None:
    if indices.numel() == 0:
        return
    low_t, high_t = torch.aminmax(indices)
    low, high = int(low_t), int(high_t)
    if low < 0 or high >= num_codewords:
        raise ValueError(f"indices must be in [0, {num_codewords}) (num_codewords), got min {low} and max {high}")


def _codeword_histogram_impl(indices: torch.Tensor, num_codewords: int, batch_dims: int,
                             backend: str) -> torch.Tensor:
    # Data-dependent check here rather than in the public function, so torch.compile does not
    # graph-break; it runs before any counting on every backend.
    _check_index_range(indices, num_codewords)
    chosen = BACKENDS.select(backend, indices.device, indices.dtype)
    return chosen.impl(indices, num_codewords, batch_dims)


_codeword_histogram_op = torch.library.custom_op("mmxai_fast::codeword_histogram",
                                                 mutates_args=())(_codeword_histogram_impl)


@_codeword_histogram_op.register_fake
def _(indices, num_codewords, batch_dims, backend):
    shape = (indices.shape[0], num_codewords) if batch_dims else (num_codewords,)
    return indices.new_empty(shape, dtype=torch.int64)


def codeword_histogram(indices: torch.Tensor, num_codewords: int, *, batch_dims: int = 0,
                       backend: Optional[str] = None) -> torch.Tensor:
    """Counts of each codeword index (deep-radiomics feature vector).

    Args:
        indices: integer codeword indices in ``[0, num_codewords)``, any shape; with
            ``batch_dims=1`` the first dim is the batch (one histogram per volume), ``(B, ...)``.
        num_codewords: ``K >= 1``, the number of bins.
        batch_dims: 0 (one histogram over everything) or 1 (one per entry of the first dim).
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        int64 ``(K,)`` when ``batch_dims == 0``, ``(B, K)`` when ``batch_dims == 1``.

    Indices are integers, so there is no NaN; the ``-1`` that :func:`vq_nearest` gives a
    non-finite row is out of range and raises ``ValueError`` (never silently dropped).

    Raises:
        TypeError: ``indices`` is not an integer tensor.
        ValueError: ``num_codewords < 1``, ``batch_dims`` not 0 or 1, ``batch_dims=1`` with 0-dim
            ``indices``, or an index outside ``[0, num_codewords)``.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(indices, "indices")
    require_integer(indices, "indices")
    int_at_least(num_codewords, "num_codewords", 1)
    if isinstance(batch_dims, bool) or batch_dims not in (0, 1):
        raise ValueError(f"batch_dims must be 0 or 1, got {batch_dims!r}")
    if batch_dims == 1 and indices.dim() == 0:
        raise ValueError("indices must have a batch dim (B, ...) when batch_dims=1, got a 0-dim tensor")
    return run_op("codeword_histogram", _codeword_histogram_impl, indices, num_codewords, batch_dims, backend or "")
