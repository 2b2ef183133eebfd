"""Modality-level quality of a heatmap: MSFI and the modality-importance correlation.

Jin, Li, Hamarneh, "Evaluating explainable AI on a multi-modal medical imaging task: can existing
algorithms fulfill clinical requirements?" (AAAI 2022). The ground-truth importance of modality
``m`` is its exact Shapley value ``phi_m`` in the game "keep these modalities, the others take the
baseline" (all ``2^M`` subsets through the engine). MSFI asks whether a heatmap's positive mass
sits inside each modality's feature region ``L_m``, weighted by how much the modality matters::

    MSFI = sum_m phi_m (sum_i 1[L_m,i > 0] S+_m,i / sum_i S+_m,i) / sum_m phi_m

with ``phi`` min-max normalised to [0, 1] and ``S+`` the positive part of the heatmap of
modality ``m``. The modality-importance correlation is Kendall's tau-b between ``phi`` and the
per-modality sums of ``S+``.
"""
from __future__ import annotations

from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from ..estimators._game import ModelGame, exact_shapley

__all__ = ["modality_shapley", "msfi", "kendall_tau_b", "modality_importance_correlation"]

MAX_MODALITIES = 16


def modality_shapley(forward_func, inputs: Tensor, baselines: Union[float, Tensor] = 0.0,
                     target: Optional[int] = None, modality_dim: int = 1) -> Tensor:
    """Exact Shapley values ``[M]`` float64 of the modalities (channels along ``modality_dim`` of
    the ``(1, M, *S)`` input), by enumerating the ``2^M`` subsets of modalities."""
    num = inputs.shape[modality_dim]
    if not 1 <= num <= MAX_MODALITIES:
        raise ValueError(f"inputs must have 1..{MAX_MODALITIES} modalities along dim {modality_dim}, got {num}")
    shape = [1] * (inputs.dim() - 1)
    shape[modality_dim - 1] = num
    mask = torch.arange(num, device=inputs.device).view(shape)
    game = ModelGame(forward_func, inputs, baselines, mask, target)
    return exact_shapley(game, num, device=inputs.device)


def _region_shares(attributions: Tensor, regions: Tensor) -> Tensor:
    positive = attributions.detach().double().clamp(min=0).flatten(1)
    inside = (regions > 0).expand_as(attributions).flatten(1).to(positive.dtype)
    total = positive.sum(1)
    return torch.where(total > 0, (positive * inside).sum(1) / total.clamp(min=1e-300), 0.0)


def msfi(attributions: Tensor, regions: Tensor, modality_values: Tensor) -> float:
    """Modality-specific feature importance (formula in the module docstring).

    Args:
        attributions: heatmap ``[M, *S]``.
        regions: ``L`` as ``[M, *S]`` or ``[*S]`` (shared by the modalities); nonzero = inside.
        modality_values: ``phi`` ``[M]`` (e.g. :func:`modality_shapley`), min-max normalised here;
            all equal means every modality counts the same.

    Returns:
        A number in [0, 1] (1: all positive attribution inside the regions of the modalities
        that matter).
    """
    phi = torch.as_tensor(modality_values, dtype=torch.float64).flatten().cpu()
    if attributions.dim() < 1 or attributions.shape[0] != phi.numel():
        raise ValueError(f"attributions must be [M, ...] with M = {phi.numel()} (len(modality_values)), got "
                         f"shape {tuple(attributions.shape)}")
    span = phi.max() - phi.min()
    weights = (phi - phi.min()) / span if span > 0 else torch.ones_like(phi)
    shares = _region_shares(attributions.cpu(), regions.cpu())
    return float((weights * shares).sum() / weights.sum())


def kendall_tau_b(x: Union[Sequence[float], Tensor], y: Union[Sequence[float], Tensor]) -> float:
    """Kendall's tau-b (ties corrected); 0 when either side is constant."""
    a, b = torch.as_tensor(x, dtype=torch.float64).flatten(), torch.as_tensor(y, dtype=torch.float64).flatten()
    if a.numel() != b.numel():
        raise ValueError(f"x and y must have the same length, got {a.numel()} and {b.numel()}")
    upper = torch.triu(torch.ones((a.numel(), a.numel()), dtype=torch.bool), diagonal=1)
    da = torch.sign(a.unsqueeze(0) - a.unsqueeze(1))[upper]
    db = torch.sign(b.unsqueeze(0) - b.unsqueeze(1))[upper]
    denom = float(((da != 0).sum() * (db != 0).sum()).double().sqrt())
    return float((da * db).sum()) / denom if denom > 0 else 0.0


def modality_importance_correlation(attributions: Tensor, modality_values: Tensor) -> float:
    """Kendall tau-b between ``phi`` and each modality's sum of positive attribution."""
    positive = attributions.detach().double().clamp(min=0).flatten(1).sum(1)
    return kendall_tau_b(torch.as_tensor(modality_values).cpu(), positive.cpu())
