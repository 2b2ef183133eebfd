"""Per-volume codeword histograms: the deep-radiomics feature vector (Kobayashi et al. 2021).

The 2D encoder quantises each slice; the histogram of codeword indices over all slices of a
volume (155 BraTS slices x 8 x 8 positions) is one ``K``-dimensional feature vector.
"""
from __future__ import annotations

import math
from typing import Optional

import torch
from torch import Tensor

from ..ops.codeword_histogram import codeword_histogram
from .._validation import positive_int, require_integer, require_ndim, require_same_device, require_tensor

__all__ = ["volume_codeword_histograms", "volume_codeword_histograms_reference"]


def _check_range(t: Tensor, name: str, upper: int, upper_name: str) -> None:
    if t.numel() == 0:
        return
    low, high = (int(v) for v in torch.aminmax(t))
    if low < 0 or high >= upper:
        raise ValueError(f"{name} must be in [0, {upper}) ({upper_name}), got min {low} and max {high}")


def volume_codeword_histograms_reference(indices: Tensor, num_codewords: int,
                                         volume_ids: Optional[Tensor] = None,
                                         num_volumes: Optional[int] = None) -> Tensor:
    """Plain-PyTorch oracle: one ``torch.bincount`` per volume (see
    :func:`volume_codeword_histograms` for the arguments)."""
    if volume_ids is None:
        return torch.stack([torch.bincount(v.reshape(-1).long(), minlength=num_codewords) for v in indices]) \
            if indices.shape[0] else torch.zeros((0, num_codewords), dtype=torch.int64)
    if num_volumes is None:
        num_volumes = int(volume_ids.max()) + 1 if volume_ids.numel() else 0
    rows = [torch.bincount(indices[volume_ids == v].reshape(-1).long(), minlength=num_codewords)
            for v in range(num_volumes)]
    return torch.stack(rows) if rows else torch.zeros((0, num_codewords), dtype=torch.int64)


def volume_codeword_histograms(indices: Tensor, num_codewords: int, volume_ids: Optional[Tensor] = None, *,
                               num_volumes: Optional[int] = None, backend: Optional[str] = None) -> Tensor:
    """Codeword counts per volume over all its slices, in one kernel call.

    Two layouts:

    - ``volume_ids=None``: ``indices`` is ``(V, S, ...)`` (volume, slice, latent positions), or any
      ``(V, ...)``; row ``v`` counts everything in ``indices[v]``.
    - ``volume_ids`` ``(N,)``: ``indices`` is ``(N, ...)`` slices in any order (e.g. the encoder's
      batches concatenated) and slice ``n`` belongs to volume ``volume_ids[n]``. The counts are
      taken with one histogram over the combined bin ``volume_ids[n] * K + indices[n, ...]``.

    Args:
        indices: integer codeword indices in ``[0, num_codewords)``.
        num_codewords: ``K``.
        volume_ids: optional integer ``(N,)`` in ``[0, num_volumes)``.
        num_volumes: ``V`` with ``volume_ids`` (default ``max(volume_ids) + 1``); volumes without a
            slice get a zero row.
        backend: ``codeword_histogram`` backend.

    Returns:
        int64 ``(V, K)``.

    Raises:
        TypeError: ``indices`` or ``volume_ids`` is not an integer tensor.
        ValueError: wrong shapes, an index outside ``[0, num_codewords)`` or a volume id outside
            ``[0, num_volumes)``, ``num_volumes`` without ``volume_ids``.
    """
    require_tensor(indices, "indices")
    require_integer(indices, "indices")
    num_codewords = positive_int(num_codewords, "num_codewords")
    if indices.dim() < 1:
        raise ValueError(f"indices must have shape (V, S, ...) or (N, ...) (at least 1 dim), got shape {tuple(indices.shape)}")
    _check_range(indices, "indices", num_codewords, "num_codewords")
    if volume_ids is None:
        if num_volumes is not None:
            raise ValueError("num_volumes is only used with volume_ids; with indices (V, S, ...) V is indices.shape[0]")
        return codeword_histogram(indices, num_codewords, batch_dims=1, backend=backend)

    require_tensor(volume_ids, "volume_ids")
    require_integer(volume_ids, "volume_ids")
    require_ndim(volume_ids, "volume_ids", 1, "(N,)")
    require_same_device("indices", indices, "volume_ids", volume_ids)
    if volume_ids.shape[0] != indices.shape[0]:
        raise ValueError(f"volume_ids must have one entry per slice of indices (N={indices.shape[0]}), "
                         f"got shape {tuple(volume_ids.shape)}")
    if num_volumes is None:
        num_volumes = int(volume_ids.max()) + 1 if volume_ids.numel() else 0
    elif isinstance(num_volumes, bool) or not isinstance(num_volumes, int) or num_volumes < 0:
        raise ValueError(f"num_volumes must be an int >= 0, got {num_volumes!r}")
    _check_range(volume_ids, "volume_ids", num_volumes, "num_volumes")
    if num_volumes == 0:
        return torch.zeros((0, num_codewords), dtype=torch.int64, device=indices.device)
    per_slice = indices.reshape(indices.shape[0], math.prod(indices.shape[1:]))
    combined = volume_ids.to(torch.int64)[:, None] * num_codewords + per_slice
    return codeword_histogram(combined, num_volumes * num_codewords, backend=backend).view(num_volumes, num_codewords)
