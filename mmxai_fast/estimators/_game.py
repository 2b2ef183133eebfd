"""Coalitions -> model outputs: the one place where estimators and metrics run the model.

A *game* is a callable ``value(rows) -> [R]`` float64 on bool coalition rows ``[R, F]``
(``rows[r, f]`` keeps feature ``f``). :func:`evaluate_coalitions` is the model's game: each row
becomes a perturbed copy of the input (:func:`mmxai_fast.ops.perturb`: kept features from the
input, removed ones from the baseline), the copies go through the model in chunks under
``torch.inference_mode`` and the target output is read. Every estimator and metric goes
through :class:`ModelGame`, so swapping the engine's evaluator in is a change in this file only.
"""
from __future__ import annotations

import math
from typing import Callable, Optional, Union

import torch
from torch import Tensor

__all__ = ["evaluate_coalitions", "ModelGame", "exact_shapley", "shapley_coefficients", "Game"]

Game = Callable[[Tensor], Tensor]

#: Default budget of input elements per model call (chunk size = this // input numel).
CHUNK_ELEMENTS = 2 ** 24


def _select_target(out: Tensor, target: Optional[int], rows: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise ValueError(f"forward_func must return a tensor, got {type(out).__name__}")
    if out.dim() == 0:
        raise ValueError("forward_func must return one output per example (shape [B] or [B, C]), got a scalar")
    if out.shape[0] != rows:
        raise ValueError(f"forward_func must return one output per example: expected {rows} rows, got shape "
                         f"{tuple(out.shape)}")
    out = out.reshape(rows, -1)
    if target is None:
        if out.shape[1] != 1:
            raise ValueError(f"target must be given for a model with {out.shape[1]} outputs, got None")
        return out[:, 0]
    if not 0 <= target < out.shape[1]:
        raise ValueError(f"target must be in [0, {out.shape[1]}), got {target}")
    return out[:, target]


def evaluate_coalitions(forward_func: Callable[..., Tensor], inputs: Tensor, baselines: Union[float, Tensor],
                        feature_mask: Tensor, rows: Tensor, target: Optional[int] = None,
                        additional_forward_args: tuple = (), chunk_size: Optional[int] = None) -> Tensor:
    """Model outputs on perturbed copies of one input, one per coalition row.

    Args:
        inputs: ``(1, *S)`` one example (batch dim 1).
        baselines: number or tensor broadcastable to ``inputs`` (removed features take it).
        feature_mask: integer ids in ``[0, F)`` broadcastable to ``inputs``.
        rows: bool ``(R, F)``; ``rows[r, f]`` keeps feature ``f`` in copy ``r``.
        target: output index (``[B, C]`` outputs) or None (one output per example).
        additional_forward_args: extra positional arguments of ``forward_func``.
        chunk_size: copies per model call (default: about 2^24 input elements per call).

    Returns:
        ``(R,)`` float64 outputs on ``rows.device``.
    """
    from ..ops import perturb

    if inputs.dim() < 1 or inputs.shape[0] != 1:
        raise ValueError(f"inputs must hold one example (shape (1, ...)), got shape {tuple(inputs.shape)}")
    count = rows.shape[0]
    chunk = chunk_size or max(1, CHUNK_ELEMENTS // max(1, inputs.numel()))
    x = inputs[0]
    base = baselines[0] if isinstance(baselines, Tensor) and baselines.dim() == inputs.dim() else baselines
    mask = feature_mask[0] if feature_mask.dim() == inputs.dim() else feature_mask
    keep = rows.to(device=x.device, dtype=torch.bool)
    outputs = []
    with torch.inference_mode():
        for start in range(0, count, chunk):
            part = keep[start:start + chunk]
            batch = perturb(x, mask, part, base, validate_ids=start == 0)
            outputs.append(_select_target(forward_func(batch, *additional_forward_args), target, part.shape[0]))
    if not outputs:
        return torch.zeros(0, dtype=torch.float64, device=rows.device)
    values = torch.cat(outputs).to(device=rows.device, dtype=torch.float64)
    if not torch.isfinite(values).all():
        raise ValueError("forward_func returned NaN or infinite outputs")
    return values


class ModelGame:
    """The model as a game over ``F`` features (see :func:`evaluate_coalitions`); counts its
    evaluations in ``n_evaluations``."""

    def __init__(self, forward_func, inputs, baselines, feature_mask, target=None, additional_forward_args=(),
                 chunk_size=None):
        self.forward_func, self.inputs, self.baselines = forward_func, inputs, baselines
        self.feature_mask, self.target = feature_mask, target
        self.additional_forward_args, self.chunk_size = tuple(additional_forward_args), chunk_size
        self.num_features = int(feature_mask.max()) + 1 if feature_mask.numel() else 0
        self.n_evaluations = 0

    def __call__(self, rows: Tensor) -> Tensor:
        self.n_evaluations += rows.shape[0]
        return evaluate_coalitions(self.forward_func, self.inputs, self.baselines, self.feature_mask, rows,
                                   self.target, self.additional_forward_args, self.chunk_size)


def shapley_coefficients(rows: Tensor) -> Tensor:
    """``c[r, i]`` with ``phi_i = sum_S v(S) c_i(S)`` over all ``2^F`` subsets: ``1 / (F C(F-1, s-1))``
    for ``i in S`` and ``-1 / (F C(F-1, s))`` for ``i`` not in ``S`` (``s = |S|``); float64 ``[R, F]``."""
    num = rows.shape[-1]
    z = rows.to(torch.float64)
    s = z.sum(-1, keepdim=True)
    lgf = math.lgamma(num)  # log (F-1)!

    def inv_binom(k):  # 1 / C(F-1, k), 0 outside [0, F-1]
        ok = (k >= 0) & (k <= num - 1)
        kk = k.clamp(0, num - 1)
        return torch.where(ok, torch.exp(torch.lgamma(kk + 1) + torch.lgamma(num - kk) - lgf), 0.0)

    return (z * inv_binom(s - 1) - (1 - z) * inv_binom(s)) / num


def all_subsets(num_features: int, device=None) -> Tensor:
    """All ``2^F`` coalitions as bool ``[2^F, F]`` (bit ``f`` of the row index keeps feature ``f``)."""
    codes = torch.arange(2 ** num_features, device=device)
    return ((codes.unsqueeze(1) >> torch.arange(num_features, device=device)) & 1).bool()


def exact_shapley(game: Game, num_features: int, device=None) -> Tensor:
    """Exact Shapley values by enumerating all ``2^F`` coalitions (``F <= 20``); float64 ``[F]``."""
    if not 1 <= num_features <= 20:
        raise ValueError(f"num_features must be in [1, 20] for exact enumeration, got {num_features}")
    rows = all_subsets(num_features, device)
    values = game(rows).to(torch.float64)
    return values @ shapley_coefficients(rows)
