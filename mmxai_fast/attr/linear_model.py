"""On-device weighted least squares for LIME / KernelSHAP surrogates.

:func:`weighted_least_squares` solves ``min_b sum_i w_i (y_i - c - x_i . b)^2`` in torch on the
data's device (minimum-norm solution through the pseudo-inverse, the same answer as scikit-learn's
``LinearRegression(sample_weight=w)``, which centres with weighted means and calls LAPACK
``gelsd``). :class:`TorchWeightedLinearRegression` wraps it as a Captum interpretable model, so
``Lime(model, interpretable_model=TorchWeightedLinearRegression())`` fits without the
scikit-learn round trip; :class:`~mmxai_fast.attr.KernelShap`'s extension path calls the function
directly for its constrained solve.
"""
from __future__ import annotations

import time
from typing import Dict, Optional, Tuple

import torch
from captum._utils.models.model import Model
from torch import Tensor
from torch.utils.data import DataLoader

from ._engine import AttributionInputError

__all__ = ["TorchWeightedLinearRegression", "weighted_least_squares"]


def weighted_least_squares(x: Tensor, y: Tensor, sample_weight: Optional[Tensor] = None, *,
                           fit_intercept: bool = True, dtype: torch.dtype = torch.float64,
                           rcond: Optional[float] = None) -> Tuple[Tensor, Tensor]:
    """Minimum-norm weighted least squares, batched over leading dims, on ``x``'s device.

    Args:
        x: ``(*B, M, F)`` design matrix (``M`` samples, ``F`` features).
        y: ``(*B, M)`` or ``(*B, M, K)`` targets.
        sample_weight: ``(*B, M)`` non-negative weights; None: all ones.
        fit_intercept: also fit ``c`` (weighted-mean centring, like scikit-learn).
        dtype: computation dtype (float64 by default).
        rcond: singular values below ``rcond`` times the largest count as zero (scikit-learn's
            ``LinearRegression(tol)``); None: ``max(M, F)`` times the dtype's epsilon.

    Returns:
        ``(coef, intercept)``: ``coef`` ``(*B, F)`` (``(*B, K, F)`` for 2-D targets) and
        ``intercept`` ``(*B,)`` (``(*B, K)``; zeros without ``fit_intercept``), in ``dtype``.

    Raises:
        AttributionInputError: mismatched shapes, negative weights or zero total weight.
    """
    if x.dim() < 2:
        raise AttributionInputError(f"x must have shape (*B, M, F), got {tuple(x.shape)}")
    vector = y.dim() == x.dim() - 1
    if y.shape[:x.dim() - 1] != x.shape[:-1] or not (vector or y.dim() == x.dim()):
        raise AttributionInputError(f"y must have shape {tuple(x.shape[:-1])} or {tuple(x.shape[:-1])} + (K,), "
                                    f"got {tuple(y.shape)}")
    x, y = x.to(dtype), y.to(device=x.device, dtype=dtype)
    if vector:
        y = y.unsqueeze(-1)
    if sample_weight is None:
        w = torch.ones(x.shape[:-1], dtype=dtype, device=x.device)
    else:
        w = sample_weight.to(device=x.device, dtype=dtype)
        if w.shape != x.shape[:-1]:
            raise AttributionInputError(f"sample_weight must have shape {tuple(x.shape[:-1])}, got {tuple(w.shape)}")
        if bool((w < 0).any()):
            raise AttributionInputError("sample_weight must be non-negative")
    w = w.unsqueeze(-1)  # (*B, M, 1)
    if fit_intercept:
        total = w.sum(-2, keepdim=True)
        if bool((total <= 0).any()):
            raise AttributionInputError("sample_weight must have a positive sum")
        x_mean = (w * x).sum(-2, keepdim=True) / total  # (*B, 1, F)
        y_mean = (w * y).sum(-2, keepdim=True) / total  # (*B, 1, K)
        x, y = x - x_mean, y - y_mean
    root = w.sqrt()
    coef = torch.linalg.pinv(root * x, rtol=rcond) @ (root * y)  # (*B, F, K)
    if fit_intercept:
        intercept = (y_mean - x_mean @ coef).squeeze(-2)
    else:
        intercept = torch.zeros(coef.shape[:-2] + coef.shape[-1:], dtype=dtype, device=x.device)
    coef = coef.transpose(-1, -2)  # (*B, K, F)
    if vector:
        return coef.squeeze(-2), intercept.squeeze(-1)
    return coef, intercept


class TorchWeightedLinearRegression(Model):
    """Captum interpretable model: weighted linear regression solved in torch on the data's device.

    A drop-in for ``captum._utils.models.SkLearnLinearRegression`` (same fit, same
    :meth:`representation` ``(K, F)`` float32 weights, :meth:`bias`), without moving the samples
    to NumPy. Computes in float64 (``dtype``).

    Args:
        fit_intercept: fit an intercept (default True, like scikit-learn).
        dtype: computation dtype.
    """

    def __init__(self, fit_intercept: bool = True, dtype: torch.dtype = torch.float64) -> None:
        self.fit_intercept = fit_intercept
        self.dtype = dtype
        self._weight: Optional[Tensor] = None
        self._bias: Optional[Tensor] = None

    def fit(self, train_data: DataLoader, **kwargs: object) -> Dict[str, float]:
        """Fit on every ``(x, y)`` or ``(x, y, w)`` batch of ``train_data`` (concatenated)."""
        xs, ys, ws = [], [], []
        for batch in train_data:
            if len(batch) not in (2, 3):
                raise AttributionInputError(f"train_data must yield (x, y) or (x, y, w), got {len(batch)} items")
            xs.append(batch[0])
            ys.append(batch[1])
            if len(batch) == 3:
                ws.append(batch[2])
        if not xs:
            raise AttributionInputError("train_data is empty")
        start = time.time()
        self.fit_tensors(torch.cat(xs), torch.cat(ys), torch.cat(ws) if ws else None)
        return {"train_time": time.time() - start}

    def fit_tensors(self, x: Tensor, y: Tensor, sample_weight: Optional[Tensor] = None
                    ) -> "TorchWeightedLinearRegression":
        """Fit on ``x`` ``(M, F)``, ``y`` ``(M,)`` or ``(M, K)``, ``sample_weight`` ``(M,)``."""
        coef, intercept = weighted_least_squares(x, y.reshape(y.shape[0], -1) if y.dim() > 2 else y,
                                                 sample_weight, fit_intercept=self.fit_intercept,
                                                 dtype=self.dtype)
        self._weight = coef.reshape(-1, x.shape[-1])
        self._bias = intercept.reshape(-1)
        return self

    def __call__(self, x: Tensor) -> Tensor:
        """Predictions ``(M, K)`` for samples ``x`` ``(M, F)`` (float32)."""
        weight = self.representation()
        return x.to(weight) @ weight.t() + self.bias().to(weight.device)

    def representation(self) -> Tensor:
        """``(K, F)`` float32 weights (``K = 1`` for a scalar target), on the data's device."""
        if self._weight is None:
            raise RuntimeError("TorchWeightedLinearRegression.fit must be called first")
        return self._weight.float()

    def bias(self) -> Optional[Tensor]:
        """``(K,)`` float32 intercepts, or None before :meth:`fit`."""
        return None if self._bias is None else self._bias.float()
