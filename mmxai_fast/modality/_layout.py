"""The modality layout shared by the modality tools: ``M`` contiguous groups of channels."""
from __future__ import annotations

import torch
from .._validation import int_at_least, int_in_range


def check_num_modalities(num_modalities) -> int:
    int_at_least(num_modalities, "num_modalities", 1)
    return num_modalities


def normalized_dim(dim, ndim: int, name: str) -> int:
    int_in_range(dim, name, -ndim, ndim, f" for a {ndim}-dim input")
    return dim % ndim


def channels_per_modality(x: torch.Tensor, num_modalities: int, channel_dim: int, name: str = "inputs") -> int:
    """``C // M``; raises unless the channel count is a multiple of ``M``."""
    channels = x.shape[channel_dim]
    if channels == 0 or channels % num_modalities:
        raise ValueError(f"{name} must have a multiple of num_modalities={num_modalities} channels at dim "
                         f"{channel_dim}, got {channels} (shape {tuple(x.shape)})")
    return channels // num_modalities


def modality_of_channel(num_modalities: int, per_modality: int, device=None) -> torch.Tensor:
    """int64 ``[C]``: the modality of every channel (modality-major)."""
    return torch.arange(num_modalities, device=device).repeat_interleave(per_modality)
