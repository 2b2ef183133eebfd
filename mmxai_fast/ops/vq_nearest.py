"""Vector quantisation: ``vq_nearest``, the nearest codeword (deep radiomics, Kobayashi et al.).

A VQ-VAE encoder maps a volume to ``z_e`` of ``D`` features per position; each position is
replaced by its nearest codeword of a learned codebook ``[K, D]``, and the histogram of codeword
indices over a volume is the deep-radiomics feature vector.

``vq_nearest`` compares the expanded squared distance::

    ||z - e_k||^2 = ||z||^2 + ||e_k||^2 - 2 z . e_k

(``||z||^2`` is the same for every k, so only ``||e_k||^2 - 2 z . e_k`` is compared), fused with a
running argmin so the ``N x K`` distance matrix is never stored. Ties go to the lowest index on
every backend. The expansion loses precision when ``||z - e||^2`` is much smaller than
``||z||^2 + ||e||^2``: the distance error is of the order of ``eps * (||z||^2 + ||e_k||^2)`` where
``eps`` is float32's for float16/bfloat16/float32 inputs (computed in float32) and float64's for
float64.

Naming chain: ``vq_nearest_reference`` (oracle and fallback), ``_vq_nearest_cpu`` (C++
``csrc/cpu/vq_nearest_cpu.cpp``), ``_vq_nearest_triton`` (``kernels/triton/vq_nearest.py``), the
registered ``torch.ops.mmxai_fast.vq_nearest`` and the public ``vq_nearest``. The histogram of the
indices is ``codeword_histogram`` (``ops/codeword_histogram.py``).
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._kernels import dtype_code, triton_module
from .._validation import require_ndim, require_same_device, require_tensor

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
# The reference materialises at most this many float64 differences at once (64 MiB).
_REFERENCE_CHUNK_ELEMENTS = 1 << 23
_MAX_CODEWORDS = (1 << 31) - 128  # the C++ kernel keeps slot indices in int32 next to float32



def vq_nearest_reference(z: torch.Tensor, codebook: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
    """Plain-PyTorch oracle: direct differences ``((z_n - e_k) ** 2).sum()`` in float64.

    Rows of ``z`` and codewords are taken in chunks so that at most about 8M float64 differences
    exist at once; across codeword chunks the running minimum is replaced only by a strictly
    smaller one, so the result is the first (lowest-index) minimum, as ``torch.argmin``.

    Args:
        z: ``(N, D)`` floating.
        codebook: ``(K, D)`` floating, ``K >= 1``.

    Returns:
        ``(indices, sq_dist)``: int64 ``(N,)`` and ``(N,)`` in ``z.dtype``.
    """
    n, d = z.shape
    k = codebook.shape[0]
    e = codebook.to(torch.float64)
    k_chunk = max(1, min(k, _REFERENCE_CHUNK_ELEMENTS // max(d, 1)))
    n_chunk = max(1, _REFERENCE_CHUNK_ELEMENTS // (k_chunk * max(d, 1)))
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=torch.float64, device=z.device)
    for n0 in range(0, n, n_chunk):
        zc = z[n0:n0 + n_chunk].to(torch.float64)
        best = torch.full((zc.shape[0],), float("inf"), dtype=torch.float64, device=z.device)
        best_idx = torch.zeros(zc.shape[0], dtype=torch.int64, device=z.device)
        for k0 in range(0, k, k_chunk):
            sq = ((zc[:, None, :] - e[None, k0:k0 + k_chunk, :]) ** 2).sum(-1)
            chunk_idx = sq.argmin(1)  # documented to return the first minimum
            chunk_min = sq.gather(1, chunk_idx[:, None])[:, 0]
            better = chunk_min < best
            best = torch.where(better, chunk_min, best)
            best_idx = torch.where(better, chunk_idx + k0, best_idx)
        indices[n0:n0 + n_chunk] = best_idx
        dist[n0:n0 + n_chunk] = best
    return indices, dist.to(z.dtype)


def _vq_nearest_cpu(z, codebook):
    z, codebook = z.contiguous(), codebook.contiguous()
    n, d = z.shape
    indices = torch.empty(n, dtype=torch.int64)
    dist = torch.empty(n, dtype=z.dtype)
    if n:
        compiled_module().vq_nearest(z.data_ptr(), codebook.data_ptr(), dtype_code(z.dtype), n,
                                     codebook.shape[0], d, indices.data_ptr(), dist.data_ptr())
    return indices, dist


def _vq_nearest_triton(z, codebook):
    n = z.shape[0]
    indices = torch.empty(n, dtype=torch.int64, device=z.device)
    dist = torch.empty(n, dtype=z.dtype, device=z.device)
    if n:
        triton_module("vq_nearest").vq_nearest_forward(z, codebook, indices, dist)
    return indices, dist


def _cpu_limits(z, codebook) -> List[str]:
    if codebook.shape[0] > _MAX_CODEWORDS:
        return [f"cpu kernel takes at most {_MAX_CODEWORDS} codewords, got {codebook.shape[0]}"]
    return []


BACKENDS = B.OpBackends("vq_nearest", [
    B.cpu(_vq_nearest_cpu, dtypes=_FLOAT_DTYPES, limits=_cpu_limits),
    B.triton(_vq_nearest_triton, dtypes=_FLOAT_DTYPES),
    B.reference(vq_nearest_reference),
])


def _vq_nearest_impl(z: torch.Tensor, codebook: torch.Tensor, backend: str) -> Tuple[torch.Tensor, torch.Tensor]:
    # The backend is resolved here, at run time, so torch.compile never traces the selection.
    chosen = BACKENDS.select(backend, z.device, z.dtype, (z, codebook))
    # Non-finite values are handled here, identically for every backend (see vq_nearest).
    finite_codewords = torch.isfinite(codebook).all(dim=1)
    kept = None
    if not bool(finite_codewords.all()):  # one K-element sync
        kept = finite_codewords.nonzero()[:, 0]
        if kept.numel() == 0:
            raise ValueError(f"codebook must hold at least one finite codeword, got {codebook.shape[0]} "
                             "codewords each with a NaN or infinite entry")
        codebook = codebook[kept]
    indices, dist = chosen.impl(z, codebook)
    if kept is not None:
        indices = kept[indices]
    if z.numel():
        bad = ~torch.isfinite(z).all(dim=1)
        no_answer = torch.where(torch.isnan(z).any(dim=1), math.nan, math.inf).to(dist.dtype)
        indices = torch.where(bad, torch.full_like(indices, -1), indices)
        dist = torch.where(bad, no_answer, dist)
    return indices, dist


_vq_nearest_op = torch.library.custom_op("mmxai_fast::vq_nearest", mutates_args=())(_vq_nearest_impl)


@_vq_nearest_op.register_fake
def _(z, codebook, backend):
    n = z.shape[0]
    return z.new_empty((n,), dtype=torch.int64), z.new_empty((n,))


def vq_nearest(z: torch.Tensor, codebook: torch.Tensor, *, backend: Optional[str] = None
               ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Nearest codeword of every row of ``z`` (VQ-VAE quantisation lookup).

    Args:
        z: ``(N, D)`` encoder outputs, float16/bfloat16/float32/float64, any strides; ``N`` may be 0.
        codebook: ``(K, D)`` codewords, same dtype and device as ``z``, ``K >= 1``.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"`` or ``"triton"``.

    Returns:
        ``(indices, sq_dist)``: int64 ``(N,)`` with ``argmin_k ||z_n - e_k||^2`` (ties to the lowest
        index), and ``(N,)`` squared distances in ``z.dtype``, clamped at 0.

    NaN/Inf, identical on every backend: a row of ``z`` with a NaN or infinite entry has no nearest
    codeword: index ``-1`` (which :func:`codeword_histogram` rejects) and ``sq_dist`` NaN (a NaN
    entry) or ``inf`` (infinite entries only); it never reads as an exact match. Codewords with
    a NaN or infinite entry are never chosen and change no other row's answer. A distance that
    overflows ``z.dtype`` for finite inputs is ``inf``.

    Raises:
        TypeError: ``z`` or ``codebook`` is not a tensor, not of a supported floating dtype, or
            their dtypes differ.
        ValueError: wrong number of dims, feature sizes differ, ``K == 0`` or ``D == 0``,
            different devices, or no codeword is finite.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(z, "z")
    require_tensor(codebook, "codebook")
    for name, t in (("z", z), ("codebook", codebook)):
        if t.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{name} must be float16, bfloat16, float32 or float64, got {t.dtype}")
    if z.dtype != codebook.dtype:
        raise TypeError(f"codebook must have the dtype of z ({z.dtype}), got {codebook.dtype}")
    require_ndim(z, "z", 2, "(N, D)")
    require_ndim(codebook, "codebook", 2, "(K, D)")
    require_same_device("z", z, "codebook", codebook)
    if codebook.shape[0] < 1:
        raise ValueError(f"codebook must hold at least one codeword (K >= 1), got shape {tuple(codebook.shape)}")
    if codebook.shape[1] < 1:
        raise ValueError(f"codebook feature size D must be >= 1, got shape {tuple(codebook.shape)}")
    if z.shape[1] != codebook.shape[1]:
        raise ValueError(f"z feature size must match codebook's D={codebook.shape[1]}, got z of shape {tuple(z.shape)}")
    return run_op("vq_nearest", _vq_nearest_impl, z, codebook, backend or "")
