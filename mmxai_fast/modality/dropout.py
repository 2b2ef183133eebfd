"""Input-level modality dropout (Yi et al.; background.md section 4).

Each modality is dropped (all of its slices together) with probability ``p``; if every modality
would be dropped, none is; the survivors are scaled by ``1 / (1 - k / M)`` where ``k`` of the
``M`` modalities were dropped. For ``p = 0.25`` and ``M = 4`` the number dropped is 0, 1, 2, 3, 4
with probabilities 32.0, 42.2, 21.1, 4.7, 0 % (the paper's 32/42/21/4.7/0 %): the binomial
``C(4, k) 0.25^k 0.75^(4-k)`` with the all-dropped 0.4 % moved to "none dropped".
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from .._validation import int_at_least, require_floating, require_tensor
from ._layout import channels_per_modality, check_num_modalities, modality_of_channel, normalized_dim

__all__ = ["ModalityDropout", "sample_modality_drops", "apply_modality_drops", "modality_dropout_distribution"]


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
        raise ValueError(f"p must be a probability in [0, 1], got {p!r}")
    return float(p)


def modality_dropout_distribution(p: float, num_modalities: int) -> torch.Tensor:
    """Exact distribution of the number of dropped modalities.

    Returns:
        float64 ``(M + 1,)``: ``P(k dropped)`` for ``k = 0 .. M`` (``P(M) = 0``).
    """
    p, m = _check_p(p), check_num_modalities(num_modalities)
    probs = torch.tensor([math.comb(m, k) * p ** k * (1 - p) ** (m - k) for k in range(m + 1)], dtype=torch.float64)
    probs[0] += probs[m]  # "if all would be dropped, none is"
    probs[m] = 0.0
    return probs


def sample_modality_drops(num_samples: int, num_modalities: int, p: float, *,
                          generator: Optional[torch.Generator] = None, device=None) -> torch.Tensor:
    """Draw which modalities to drop.

    Returns:
        bool ``(num_samples, M)``, True = dropped; never a row of all True.
    """
    p, m = _check_p(p), check_num_modalities(num_modalities)
    int_at_least(num_samples, "num_samples", 0)
    drops = torch.rand((num_samples, m), generator=generator) < p
    drops &= ~drops.all(dim=1, keepdim=True)
    return drops.to(device) if device is not None else drops


def apply_modality_drops(x: torch.Tensor, drops: torch.Tensor, *, channel_dim: int = 0,
                         batch_dim: Optional[int] = None) -> torch.Tensor:
    """Zero the dropped modalities and scale the others by ``M / (M - k)``.

    Also the inference-time rule for a missing modality (zeroed, survivors rescaled).

    Args:
        x: floating input whose ``channel_dim`` holds ``M * S`` channels (modality-major).
        drops: bool ``(M,)``, or ``(N, M)`` with ``batch_dim`` (one row per sample); not all True.
        channel_dim: the channel dim of ``x``.
        batch_dim: the batch dim of ``x`` when ``drops`` has one row per sample.

    Returns:
        a new tensor like ``x``.

    Raises:
        TypeError, ValueError: bad ``x``/``drops``, a row dropping every modality.
    """
    require_tensor(x, "x")
    require_floating(x, "x")
    require_tensor(drops, "drops")
    if drops.dtype != torch.bool:
        raise TypeError(f"drops must be a bool tensor, got {drops.dtype}")
    channel_dim = normalized_dim(channel_dim, x.dim(), "channel_dim")
    rows = drops if batch_dim is not None else drops.reshape(1, -1)
    expected = (x.shape[normalized_dim(batch_dim, x.dim(), "batch_dim")],) if batch_dim is not None else ()
    if batch_dim is not None and batch_dim % x.dim() == channel_dim:
        raise ValueError(f"batch_dim and channel_dim must differ, both are {channel_dim}")
    if drops.dim() != len(expected) + 1 or tuple(drops.shape[:-1]) != expected:
        raise ValueError(f"drops must have shape {expected + ('M',)}, got {tuple(drops.shape)}")
    num_modalities = drops.shape[-1]
    per_modality = channels_per_modality(x, num_modalities, channel_dim, "x")
    if bool(rows.all(dim=1).any()):
        raise ValueError("drops must keep at least one modality per sample, got a row dropping all")
    kept = (~rows).to(torch.float64)
    scale = kept * num_modalities / kept.sum(dim=1, keepdim=True)  # [R, M]
    factor = scale[:, modality_of_channel(num_modalities, per_modality)].to(x.dtype)  # [R, C]
    shape = [1] * x.dim()
    shape[channel_dim] = factor.shape[1]
    if batch_dim is None:
        return x * factor.reshape(shape).to(x.device)
    batch_dim = batch_dim % x.dim()
    shape[batch_dim] = factor.shape[0]
    factor = factor if batch_dim < channel_dim else factor.t()
    return x * factor.reshape(shape).to(x.device)


class ModalityDropout:
    """Drop whole modalities at random (a transform for training inputs; Yi et al.).

    Args:
        p: drop probability per modality (0.25 in the paper).
        num_modalities: ``M``; the channels at ``channel_dim`` are ``M`` contiguous groups.
        channel_dim: channel dim of the inputs (0 for a sample ``(C, H, W)``, 1 for a batch).
        batch_dim: None for one sample per call; the batch dim for an independent draw per sample.
        generator: optional ``torch.Generator`` (CPU) for reproducible draws.

    Attributes:
        last_drops: bool ``(M,)`` or ``(N, M)`` of the last call (True = dropped).

    Example:
        >>> drop = ModalityDropout(0.25, num_modalities=4, channel_dim=1, batch_dim=0)
        >>> x = drop(torch.ones(8, 20, 64, 64))  # 4 sequences x 5 slices
    """

    def __init__(self, p: float = 0.25, num_modalities: int = 4, *, channel_dim: int = 0,
                 batch_dim: Optional[int] = None, generator: Optional[torch.Generator] = None) -> None:
        self.p = _check_p(p)
        self.num_modalities = check_num_modalities(num_modalities)
        self.channel_dim = channel_dim
        self.batch_dim = batch_dim
        self.generator = generator
        self.last_drops: Optional[torch.Tensor] = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        require_tensor(x, "x")
        num_samples = 1 if self.batch_dim is None else x.shape[normalized_dim(self.batch_dim, x.dim(), "batch_dim")]
        drops = sample_modality_drops(num_samples, self.num_modalities, self.p, generator=self.generator)
        self.last_drops = drops[0] if self.batch_dim is None else drops
        return apply_modality_drops(x, self.last_drops, channel_dim=self.channel_dim, batch_dim=self.batch_dim)

    def __repr__(self) -> str:
        return (f"ModalityDropout(p={self.p}, num_modalities={self.num_modalities}, "
                f"channel_dim={self.channel_dim}, batch_dim={self.batch_dim})")
