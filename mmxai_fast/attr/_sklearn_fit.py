"""Captum's scikit-learn interpretable models fitted in process, without importing scikit-learn.

``Lime`` fits ``SkLearnLasso(alpha=0.01)`` by default and ``KernelShap`` ``SkLearnLinearRegression``;
Captum's fit converts the samples to NumPy and imports ``sklearn.linear_model``, which imports
SciPy: 1.7-1.9 s on the first fit in a process (as long as 30 model evaluations of a small 3D CNN
on this project's 2-core CPU). :func:`fit_without_sklearn` does the same fit here for those two
models with their supported settings, and leaves the model as Captum's fit does
(``_construct_model_params``: float32 ``representation()`` and ``bias()``). Any other model or
setting returns None and the caller runs Captum's own fit.

- Lasso: scikit-learn 1.9's dense path (``ElasticNet.fit`` with ``precompute=False``): sample
  weights rescaled to sum to ``n``, weighted centring, rows scaled by ``sqrt(w)``, then cyclic
  coordinate descent from zero with the gap-safe screening and the duality-gap stop
  (``gap <= tol * ||y||^2``, checked when the largest coefficient step is ``<= tol`` times the
  largest coefficient), on ``alpha * n``.
- LinearRegression: the same centring and scaling, then the minimum-norm least-squares solution
  with singular values below ``tol`` (scikit-learn's ``cond``, default 1e-6) times the largest
  dropped (:func:`~mmxai_fast.attr.linear_model.weighted_least_squares`).

scikit-learn runs on Captum's float32 arrays in float32; this runs in float64 on the same float32
values: the coefficients equal scikit-learn's on float64 data (``tests/test_sklearn_fit.py``: to
1e-9 of the largest coefficient) and Captum's float32 fit to float32 rounding (1e-4 of it on
well-conditioned samples; scikit-learn's float32 solve is the less accurate of the two on
ill-conditioned ones, such as KernelShap's 1e6-weighted rows with fewer samples than features).
Versions of scikit-learn before 1.9 stop on a slightly different criterion (the same optimum,
to their tolerance).
"""
from __future__ import annotations

import time
import warnings
from typing import Any, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch
from captum._utils.models.linear_model.model import SkLearnLasso, SkLearnLinearModel, SkLearnLinearRegression
from captum._utils.models.linear_model.train import sklearn_train_linear_model

from .linear_model import weighted_least_squares

__all__ = ["fit_without_sklearn", "lasso_coordinate_descent"]

#: constructor settings each model supports here, with the values allowed (None: any value).
_LASSO_KWARGS: Dict[str, Any] = {"alpha": None, "fit_intercept": (True, False), "max_iter": None, "tol": None,
                                 "copy_X": None, "precompute": (False,), "warm_start": (False,),
                                 "positive": (False,), "selection": ("cyclic",), "random_state": None}
_LINEAR_KWARGS: Dict[str, Any] = {"fit_intercept": (True, False), "copy_X": None, "n_jobs": None, "tol": None,
                                  "positive": (False,)}
_SUPPORTED = {"linear_model.Lasso": _LASSO_KWARGS, "linear_model.LinearRegression": _LINEAR_KWARGS}
_OWN_FIT = {SkLearnLasso: SkLearnLasso.fit, SkLearnLinearRegression: SkLearnLinearRegression.fit,
            SkLearnLinearModel: SkLearnLinearModel.fit}


def _settings(model: Any) -> Optional[Tuple[str, Dict[str, Any]]]:
    """(sklearn module, constructor kwargs) when ``model`` is one of Captum's classes as shipped."""
    if _OWN_FIT.get(type(model)) is not type(model).fit or model.train_fn is not sklearn_train_linear_model:
        return None
    allowed = _SUPPORTED.get(getattr(model, "sklearn_module", None))
    kwargs = dict(getattr(model, "construct_kwargs", None) or {})
    if allowed is None:
        return None
    for name, value in kwargs.items():
        if name not in allowed or (allowed[name] is not None and not any(value is a or value == a
                                                                          for a in allowed[name])):
            return None
    return model.sklearn_module, kwargs


def _real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def fit_without_sklearn(model: Any, train_data: Iterable) -> Optional[Dict[str, float]]:
    """``model.fit(train_data)`` for Captum's ``SkLearnLasso`` / ``SkLearnLinearRegression`` without
    scikit-learn: the fit's return value (``{"train_time": ...}``), or None when ``model`` or its
    settings are not covered (nothing done: the caller fits as usual).

    ``train_data`` yields ``(x, y, w)`` batches as Captum's Lime gives them; it is iterated once, as
    Captum's fit does (a ``DataLoader`` draws its seed from the default generator then: later
    samples stay Captum's). Data this does not cover (2-D targets, no or negative weights, a zero
    weight sum, non-finite values) goes to Captum's fit from the batches already read.
    """
    settings = _settings(model)
    if settings is None:
        return None
    batches = [tuple(batch) for batch in train_data]
    arrays = _covered_arrays(batches)
    start = time.time()
    fitted = None if arrays is None else _fit(settings, *arrays)
    if fitted is None:
        return model.fit(batches)  # Captum's own fit (imports scikit-learn)
    device = getattr(model, "device", "cpu")
    model._construct_model_params(norm_type=None,
                                  weight_values=torch.tensor(fitted[0], dtype=torch.float32, device=device).view(1, -1),
                                  bias_value=torch.tensor([fitted[1]], dtype=torch.float32, device=device),
                                  classes=None)
    return {"train_time": time.time() - start}


def _covered_arrays(batches: List[tuple]) -> Optional[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """float64 ``(X, y, w)`` of the ``(x, y, w)`` batches, or None for data this module does not fit."""
    if not batches or any(len(batch) != 3 for batch in batches):
        return None
    X, y, w = (np.concatenate([batch[i].detach().cpu().numpy() for batch in batches]).astype(np.float64)
               for i in range(3))
    if X.ndim != 2 or y.ndim != 1 or w.ndim != 1 or not len(X) == len(y) == len(w):
        return None
    if not (np.isfinite(X).all() and np.isfinite(y).all() and np.isfinite(w).all()) or (w < 0).any() or w.sum() <= 0:
        return None
    return X, y, w


def _fit(settings: Tuple[str, Dict[str, Any]], X: np.ndarray, y: np.ndarray, w: np.ndarray
         ) -> Optional[Tuple[np.ndarray, float]]:
    """(coef, intercept) of the weighted fit, or None for settings outside scikit-learn's checks."""
    module, kwargs = settings
    fit_intercept = bool(kwargs.get("fit_intercept", True))
    if module == "linear_model.Lasso":
        alpha, tol, max_iter = kwargs.get("alpha", 1.0), kwargs.get("tol", 1e-4), kwargs.get("max_iter", 1000)
        if not (_real(alpha) and alpha > 0 and _real(tol) and isinstance(max_iter, int) and max_iter >= 1):
            return None
        return _lasso(X, y, w, float(alpha), float(tol), max_iter, fit_intercept)
    tol = kwargs.get("tol", 1e-6)
    if not (_real(tol) and tol >= 0):
        return None
    coef, intercept = weighted_least_squares(torch.from_numpy(X), torch.from_numpy(y), torch.from_numpy(w),
                                             fit_intercept=fit_intercept, rcond=float(tol))
    return coef.numpy(), float(intercept)


def _lasso(X: np.ndarray, y: np.ndarray, w: np.ndarray, alpha: float, tol: float, max_iter: int,
           fit_intercept: bool) -> Tuple[np.ndarray, float]:
    """scikit-learn's weighted Lasso preprocessing around :func:`lasso_coordinate_descent`."""
    n = X.shape[0]
    w = w * (n / w.sum())  # sum(w) = n, so that alpha * n is the weighted objective's penalty
    x_offset = np.average(X, axis=0, weights=w) if fit_intercept else np.zeros(X.shape[1])
    y_offset = float(np.average(y, weights=w)) if fit_intercept else 0.0
    root = np.sqrt(w)
    coef = lasso_coordinate_descent((X - x_offset) * root[:, None], (y - y_offset) * root, alpha * n, tol,
                                    max_iter)
    return coef, y_offset - float(x_offset @ coef)  # 0 without an intercept: both offsets are 0


def _duality_gap(X: np.ndarray, y: np.ndarray, w: np.ndarray, R: np.ndarray, alpha: float) -> Tuple[float, np.ndarray, float]:
    """(gap, X^T R, ||X^T R||_inf) of ``1/2 ||y - X w||^2 + alpha ||w||_1`` (scikit-learn's formulation A)."""
    xtr = X.T @ R
    dual_norm = float(np.abs(xtr).max()) if xtr.size else 0.0
    r_norm2, r_y = float(R @ R), float(R @ y)
    primal = 0.5 * r_norm2 + alpha * float(np.abs(w).sum())
    scale = alpha / dual_norm if dual_norm > alpha else 1.0
    return primal - (-0.5 * scale ** 2 * r_norm2 + scale * r_y), xtr, dual_norm


def _screen(columns: list, norm2: np.ndarray, w: np.ndarray, R: np.ndarray, excluded: np.ndarray, xtr: np.ndarray,
            dual_norm: float, gap: float, alpha: float) -> list:
    """Gap-safe screening: the active features; those proven zero at the optimum are excluded and set
    to 0 (``R`` and ``w`` updated in place)."""
    radius = np.sqrt(2 * gap) / alpha
    active = []
    for j in np.flatnonzero(~excluded):
        if norm2[j] != 0 and (1 - abs(xtr[j] / max(alpha, dual_norm))) / np.sqrt(norm2[j]) <= radius:
            active.append(int(j))
            continue
        if w[j] != 0:
            R += w[j] * columns[j]
            w[j] = 0.0
        excluded[j] = True
    return active


def lasso_coordinate_descent(X: np.ndarray, y: np.ndarray, alpha: float, tol: float = 1e-4,
                             max_iter: int = 1000) -> np.ndarray:
    """Minimise ``1/2 ||y - X w||^2 + alpha ||w||_1`` by cyclic coordinate descent from ``w = 0``,
    as scikit-learn 1.9's ``enet_coordinate_descent`` (``beta = 0``, screening on) does.

    Warns (``UserWarning``, scikit-learn's ``ConvergenceWarning`` text) when ``max_iter`` sweeps
    end above the tolerance, and returns the last iterate, as scikit-learn does.
    """
    n_features = X.shape[1]
    columns = [np.ascontiguousarray(X[:, j]) for j in range(n_features)]
    norm2 = np.einsum("ij,ij->j", X, X)
    w = np.zeros(n_features)
    R = y.copy()
    gap_tol = tol * float(y @ y)
    gap, xtr, dual_norm = _duality_gap(X, y, w, R, alpha)
    if gap <= gap_tol:
        return w
    excluded = np.zeros(n_features, dtype=bool)
    active = _screen(columns, norm2, w, R, excluded, xtr, dual_norm, gap, alpha)
    for n_iter in range(max_iter):
        w_max = d_w_max = 0.0
        for j in active:
            w_j = w[j]
            tmp = float(columns[j] @ R) + w_j * norm2[j]
            new = np.sign(tmp) * max(abs(tmp) - alpha, 0.0) / norm2[j]
            if new != w_j:
                R += (w_j - new) * columns[j]
                w[j] = new
            d_w_max = max(d_w_max, abs(new - w_j))
            w_max = max(w_max, abs(new))
        if w_max == 0.0 or d_w_max / w_max <= tol or n_iter == max_iter - 1:
            gap, xtr, dual_norm = _duality_gap(X, y, w, R, alpha)
            if gap <= gap_tol:
                return w
            active = _screen(columns, norm2, w, R, excluded, xtr, dual_norm, gap, alpha)
    warnings.warn(f"Objective did not converge. You might want to increase the number of iterations. "
                  f"Duality gap: {gap:.6e}, tolerance: {gap_tol:.3e}", UserWarning, stacklevel=2)
    return w
