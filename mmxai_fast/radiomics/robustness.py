"""Robustness of deep-radiomics histograms to intensity changes (Kobayashi et al. 2021).

The difference ratio of a perturbed volume's codeword histogram ``h'`` to the original ``h``::

    r = sum_k |h'_k - h_k| / sum_k h_k

(0 when nothing changes, at most 2 when every position moves to another codeword). The input
intensities are perturbed with a strength ``s`` from 0.0 to 1.0 in steps of 0.1, in two ways:

- scaling: ``x' = x * (1 + s)``  (s = 1.0 doubles the contrast),
- shifting: ``x' = x + s``       (in the units of the normalised input, e.g. one standard
  deviation for z-scored MRI).

Both act on every voxel and channel of the encoder's input and are the identity at ``s = 0``.
The paper gives the strengths but not the formulas; these are the choices made here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import Tensor

from .histograms import volume_codeword_histograms
from .._validation import positive_int, require_floating, require_tensor

__all__ = ["INTENSITY_STRENGTHS", "IntensityRobustness", "difference_ratio", "perturb_intensity",
           "intensity_robustness"]

# 0.0, 0.1, ..., 1.0 (rounded so that the values print and compare as written).
INTENSITY_STRENGTHS = tuple(round(0.1 * i, 1) for i in range(11))
_KINDS = ("scale", "shift")


def difference_ratio(h_perturbed: Tensor, h_original: Tensor) -> Tensor:
    """``sum_k |h_perturbed - h_original| / sum_k h_original`` over the last dim.

    Args:
        h_perturbed: ``(..., K)`` counts (any real or integer dtype).
        h_original: ``(..., K)``, broadcastable with ``h_perturbed``; every histogram must have
            a positive sum.

    Returns:
        float64 ``(...)`` (the broadcast batch shape).

    Raises:
        ValueError: the last dims differ, shapes do not broadcast, or an original histogram sums
            to 0 (its ratio is undefined).
    """
    require_tensor(h_perturbed, "h_perturbed")
    require_tensor(h_original, "h_original")
    if h_perturbed.dim() < 1 or h_original.dim() < 1 or h_perturbed.shape[-1] != h_original.shape[-1]:
        raise ValueError(f"h_perturbed and h_original must be (..., K) with the same K, got shapes "
                         f"{tuple(h_perturbed.shape)} and {tuple(h_original.shape)}")
    try:
        torch.broadcast_shapes(h_perturbed.shape, h_original.shape)
    except RuntimeError:
        raise ValueError(f"h_perturbed of shape {tuple(h_perturbed.shape)} does not broadcast with "
                         f"h_original of shape {tuple(h_original.shape)}") from None
    original = h_original.to(torch.float64)
    total = original.sum(-1)
    if (total <= 0).any():
        raise ValueError("h_original must have a positive sum in every histogram, got a histogram summing to "
                         f"{float(total.min())}")
    return (h_perturbed.to(torch.float64) - original).abs().sum(-1) / total


def perturb_intensity(x: Tensor, kind: str, strength: float) -> Tensor:
    """``x * (1 + strength)`` (``kind="scale"``) or ``x + strength`` (``kind="shift"``)."""
    if kind == "scale":
        return x * (1 + strength)
    if kind == "shift":
        return x + strength
    raise ValueError(f"kind must be one of {_KINDS}, got {kind!r}")


@dataclass(frozen=True)
class IntensityRobustness:
    """Result of :func:`intensity_robustness`.

    Attributes:
        strengths: float64 ``(T,)`` the strengths ``s``.
        scale: float64 ``(V, T)`` difference ratio of each volume under ``x * (1 + s)``.
        shift: float64 ``(V, T)`` difference ratio under ``x + s``.
        original: int64 ``(V, K)`` histograms of the unperturbed volumes.
    """

    strengths: Tensor
    scale: Tensor
    shift: Tensor
    original: Tensor


def _volume_histograms(encode, volumes, num_codewords, perturbation, batch_size, bar) -> Tensor:
    num_volumes, num_slices = volumes.shape[:2]
    slices = volumes.reshape((num_volumes * num_slices,) + volumes.shape[2:])
    chunks = []
    for start in range(0, slices.shape[0], batch_size):
        chunks.append(encode(perturbation(slices[start:start + batch_size])))
        if bar is not None:
            bar.update()
    indices = torch.cat(chunks)
    if indices.shape[0] != slices.shape[0] or indices.is_floating_point():
        raise ValueError(f"encode must return integer codeword indices with one row per slice ({slices.shape[0]}), "
                         f"got {indices.dtype} of shape {tuple(indices.shape)}")
    return volume_codeword_histograms(indices.view((num_volumes, num_slices) + indices.shape[1:]), num_codewords)


def intensity_robustness(encode: Callable[[Tensor], Tensor], volumes: Tensor, num_codewords: int, *,
                         strengths: Sequence[float] = INTENSITY_STRENGTHS, batch_size: int = 64,
                         show_progress: bool = False) -> IntensityRobustness:
    """Difference ratios of per-volume codeword histograms under intensity scaling and shifting.

    Every slice of every volume is encoded once unperturbed and once per (kind, strength), in
    batches of ``batch_size`` slices; ``s = 0`` reuses the unperturbed histograms.

    Args:
        encode: slices ``(n, C, H, W)`` -> integer codeword indices ``(n, ...)``, e.g.
            ``VQEncoderDecoder.encode_indices``; called under ``torch.no_grad()``.
        volumes: ``(V, S, C, H, W)`` floating (volume, slice, channel, height, width); the
            normalised encoder input.
        num_codewords: ``K``.
        strengths: the ``s`` values (default 0.0 to 1.0 in steps of 0.1).
        batch_size: slices per ``encode`` call.
        show_progress: tqdm bar over ``encode`` calls.

    Returns:
        :class:`IntensityRobustness`.

    Raises:
        TypeError: ``volumes`` is not a floating tensor.
        ValueError: ``volumes`` is not 5-D, empty ``strengths``, a non-finite strength, bad
            ``batch_size``, or ``encode`` returns the wrong number of rows or non-integer values.
    """
    require_tensor(volumes, "volumes")
    require_floating(volumes, "volumes")
    if volumes.dim() != 5:
        raise ValueError(f"volumes must have shape (V, S, C, H, W) (5 dims), got shape {tuple(volumes.shape)}")
    if volumes.shape[0] == 0 or volumes.shape[1] == 0:
        raise ValueError(f"volumes must hold at least one volume and one slice, got shape {tuple(volumes.shape)}")
    num_codewords = positive_int(num_codewords, "num_codewords")
    batch_size = positive_int(batch_size, "batch_size")
    strengths = [float(s) for s in strengths]
    if not strengths or not all(math.isfinite(s) for s in strengths):
        raise ValueError(f"strengths must be a non-empty sequence of finite numbers, got {strengths!r}")

    passes = 1 + len(_KINDS) * sum(s != 0 for s in strengths)
    bar = None
    if show_progress:
        from tqdm.auto import tqdm

        calls = math.ceil(volumes.shape[0] * volumes.shape[1] / batch_size)
        bar = tqdm(total=passes * calls, desc="Intensity robustness")
    try:
        with torch.no_grad():
            original = _volume_histograms(encode, volumes, num_codewords, lambda x: x, batch_size, bar)
            ratios = {}
            for kind in _KINDS:
                columns = []
                for s in strengths:
                    if s == 0:
                        perturbed = original
                    else:
                        perturbed = _volume_histograms(encode, volumes, num_codewords,
                                                       lambda x, kind=kind, s=s: perturb_intensity(x, kind, s),
                                                       batch_size, bar)
                    columns.append(difference_ratio(perturbed, original))
                ratios[kind] = torch.stack(columns, dim=1)
    finally:
        if bar is not None:
            bar.close()
    return IntensityRobustness(strengths=torch.tensor(strengths, dtype=torch.float64),
                               scale=ratios["scale"], shift=ratios["shift"], original=original)
