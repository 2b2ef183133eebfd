"""Figures a clinician can read (Jin et al. 2023): heatmaps scaled to [-1, 1] keeping the sign,
optionally smoothed, in a red-white-blue colormap (red: evidence for the target) over the axial
slice with the largest tumour area, all modalities side by side; and a modality-importance bar chart.

matplotlib is used through its object API with the Agg canvas (no display needed).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Mapping, Optional, Union

import numpy as np
import torch
from torch import Tensor

from .case import Case

if TYPE_CHECKING:  # annotation only: no runtime import of the explain machinery
    from .explain import Explanation

__all__ = ["scale_signed", "smooth", "choose_axial_slice", "plot_explanation", "plot_modality_importance"]

ArrayLike = Union[Tensor, np.ndarray]


def scale_signed(attributions: ArrayLike) -> Tensor:
    """Divide by the largest absolute value (over everything given, so modalities stay
    comparable): values in [-1, 1], signs kept, all-zero input returned as zeros.

    Args:
        attributions: any shape, e.g. ``[M, X, Y, Z]``.

    Returns:
        float32 tensor of the same shape.
    """
    values = torch.as_tensor(attributions).detach().float().cpu()
    peak = float(values.abs().max()) if values.numel() else 0.0
    return values / peak if peak > 0 else torch.zeros_like(values)


def smooth(attributions: ArrayLike, sigma: Optional[float]) -> Tensor:
    """Gaussian smoothing of each modality's map (``[M, *S]``) over the spatial axes, sigma in voxels."""
    values = torch.as_tensor(attributions).detach().float().cpu()
    if not sigma:
        return values
    if sigma < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {sigma}")
    from scipy.ndimage import gaussian_filter

    return torch.from_numpy(np.stack([gaussian_filter(m, sigma) for m in values.numpy()]))


def choose_axial_slice(volume: ArrayLike) -> int:
    """Index along the last axis (axial ``Z``) to show.

    Args:
        volume: a bool mask ``[X, Y, Z]`` (or ``[M, X, Y, Z]``): the slice with the largest area
            (tumour ROI); or attributions ``[..., Z]``: the slice with the largest total
            ``|attribution|``. Ties go to the lowest index.

    Returns:
        slice index in ``[0, Z)``.

    Raises:
        ValueError: fewer than 3 dims (2D cases have no slice to choose).
    """
    values = torch.as_tensor(volume).detach().cpu()
    if values.dim() < 3:
        raise ValueError(f"choose_axial_slice needs a [X, Y, Z] volume, got shape {tuple(values.shape)}")
    weight = values.double() if values.dtype == torch.bool else values.double().abs()
    return int(weight.reshape(-1, values.shape[-1]).sum(dim=0).argmax())


def _display_slice(case: Case, attributions: Tensor, slice: Optional[int]) -> Optional[int]:
    if case.image.dim() == 3:
        return None
    depth = case.image.shape[-1]
    if slice is None:
        roi = case.roi
        return choose_axial_slice(roi if roi is not None and bool(roi.any()) else attributions)
    if isinstance(slice, bool) or not isinstance(slice, int) or not -depth <= slice < depth:
        raise ValueError(f"slice must be an int in [0, {depth}), got {slice!r}")
    return slice % depth


def _plane(volume: Tensor, index: Optional[int]) -> np.ndarray:
    plane = volume if index is None else volume[..., index]
    return plane.numpy().T  # rows = Y, columns = X, shown with origin="lower"


def plot_explanation(case: Case, explanation, slice: Optional[int] = None, smooth_sigma: Optional[float] = None):
    """All modalities side by side: grey anatomy with the signed heatmap on top.

    The heatmap is smoothed (``smooth_sigma`` voxels, optional), scaled to [-1, 1] over all
    modalities together and drawn with matplotlib's ``bwr`` colormap centred at 0 (red positive,
    blue negative), opaque in proportion to ``|value|``; the ROI outline is drawn in green.

    Args:
        case: the explained :class:`Case`.
        explanation: its :class:`~mmxai_fast.pipeline.Explanation`.
        slice: axial index; None: largest ROI area, else largest total ``|attribution|``.
        smooth_sigma: Gaussian sigma in voxels, None/0 for none.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    heat = scale_signed(smooth(explanation.attributions, smooth_sigma))
    index = _display_slice(case, heat, slice)
    names = case.modalities
    fig = Figure(figsize=(3.2 * len(names) + 0.8, 3.6), layout="constrained")
    axes = fig.subplots(1, len(names), squeeze=False)[0]
    image = None
    for m, (ax, name) in enumerate(zip(axes, names)):
        anatomy = _plane(case.image[m].cpu(), index)
        ax.imshow(anatomy, cmap="gray", origin="lower")
        values = _plane(heat[m], index)
        image = ax.imshow(values, cmap="bwr", vmin=-1, vmax=1, origin="lower",
                          alpha=np.clip(np.abs(values), 0, 1) * 0.85)
        if case.roi is not None and bool(case.roi.any()):
            ax.contour(_plane(case.roi.float().cpu(), index), levels=[0.5], colors="lime", linewidths=0.8)
        share = explanation.modality_importance.get(name)
        ax.set_title(name if share is None else f"{name} ({100 * share:.1f}%)")
        ax.set_axis_off()
    where = "" if index is None else f", axial slice {index}"
    fig.suptitle(f"{explanation.method}, target {explanation.target}{where}")
    fig.colorbar(image, ax=list(axes), shrink=0.8, label="attribution (scaled)")
    return fig


def plot_modality_importance(importance: Union[Mapping[str, float], Explanation], title: Optional[str] = None):
    """Bar chart of per-modality importance (share of the total ``|attribution|``, in %).

    Args:
        importance: ``{modality: share}`` or an Explanation.

    Returns:
        ``matplotlib.figure.Figure``.
    """
    from matplotlib.figure import Figure

    if not isinstance(importance, Mapping):
        title = title or f"{importance.method}: modality importance"
        importance = importance.modality_importance
    names, shares = list(importance), [100 * float(v) for v in importance.values()]
    fig = Figure(figsize=(1.2 * len(names) + 2, 3.2), layout="constrained")
    ax = fig.subplots()
    bars = ax.bar(names, shares, color="tab:red")
    ax.bar_label(bars, fmt="%.1f%%")
    ax.set_ylabel("share of |attribution| (%)")
    ax.set_ylim(0, max(shares + [1.0]) * 1.15)
    ax.set_title(title or "modality importance")
    return fig
