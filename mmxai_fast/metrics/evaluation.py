"""All metrics of one explanation of a :class:`~mmxai_fast.pipeline.Case`: :func:`evaluate_explanation`
(what ``mmxai-fast evaluate`` and ``explain --metrics`` report) and the figure of its curves."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, Optional, Union, cast

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from ..pipeline.explain import Explanation

from .faithfulness import perturbation_curves
from .modality import modality_importance_correlation, modality_shapley, msfi

__all__ = ["evaluate_explanation", "plot_curves", "localisation"]


def localisation(attributions: Tensor, roi: Tensor) -> float:
    """Share of the positive attribution inside ``roi`` (broadcast over the modalities)."""
    positive = attributions.detach().double().clamp(min=0)
    total = positive.sum()
    return float((positive * roi.to(positive.dtype)).sum() / total) if total > 0 else 0.0


def _predicted_target(model: nn.Module, x: Tensor) -> Optional[int]:
    with torch.inference_mode():
        out = model(x)
    return None if out.dim() <= 1 or out.shape[-1] == 1 else int(out.argmax(-1).flatten()[0])


def evaluate_explanation(model: nn.Module, case, attributions: Union[Tensor, "Explanation"], target: Optional[int] = None,
                         baseline=None, feature_mask: Optional[Tensor] = None, superpixels=None,
                         steps: int = 20, n_random: int = 4, seed: int = 0,
                         device: Union[None, str, torch.device] = None) -> Dict[str, Any]:
    """Quality metrics of a heatmap of ``case`` (the model sees ``case.image[None]``).

    Args:
        model: the explained model (put in eval mode for the call, restored afterwards).
        case: :class:`~mmxai_fast.pipeline.Case` with an ROI (``case.roi``, the MSFI regions).
        attributions: ``[M, *S]`` heatmap, or an :class:`~mmxai_fast.pipeline.Explanation` (its
            attributions, target and superpixels are used).
        target: output index (None: the explanation's, else the model's argmax).
        baseline: :class:`~mmxai_fast.pipeline.Baseline` for removed features (default zeros; the
            background outside ``case.foreground`` always keeps the input, as in ``explain``).
        feature_mask: ``[M, *S]`` features of the curves (0 = background, never removed); None:
            the explanation's superpixels, else SLIC with ``superpixels``.
        steps, n_random, seed: of :func:`~mmxai_fast.metrics.perturbation_curves`.
        device: where the model runs (default: its parameters' device).

    Returns:
        JSON-able dict: ``target``, ``localisation``, ``msfi``, ``modality_shapley``,
        ``modality_tau_b``, ``deletion`` / ``insertion`` (curves, areas, random references),
        ``delta_aupc``, ``fractions``, ``n_evaluations``.

    Raises:
        ValueError: no ROI or an empty ROI, attributions of the wrong shape.
    """
    from ..pipeline import Baseline, Superpixels, superpixel_mask

    if case.roi is None:
        raise ValueError("roi must be given (the tumour/region mask, e.g. --roi tumour.nii.gz), got none")
    if not bool(case.roi.any()):
        raise ValueError("roi must contain at least one voxel, got an empty mask")
    if hasattr(attributions, "attributions"):
        explanation = cast("Explanation", attributions)
        target = explanation.target if target is None else target
        feature_mask = explanation.feature_mask if feature_mask is None else feature_mask
        attributions = explanation.attributions
    attributions = torch.as_tensor(attributions).detach().float().cpu()
    if tuple(attributions.shape) != tuple(case.image.shape):
        raise ValueError(f"attributions must have the case's shape {tuple(case.image.shape)}, got "
                         f"{tuple(attributions.shape)}")
    baseline = baseline or Baseline.zeros()
    if device is None:
        device = next((t.device for t in list(model.parameters()) + list(model.buffers())), torch.device("cpu"))
    was_training = model.training
    model.eval()
    try:
        x = case.image[None].to(device)
        base = baseline.tensor(case)
        if case.foreground is not None:
            base = torch.where(case.foreground, base, case.image)
        base = base[None].to(device)
        if target is None:
            target = _predicted_target(model, x)
        phi = modality_shapley(model, x, base, target)
        if feature_mask is None:
            feature_mask = superpixel_mask(case, superpixels or Superpixels())
        mask = torch.as_tensor(feature_mask).long()
        fixed = 0 if int(mask.min()) == 0 else None
        mask = mask if fixed == 0 else mask - int(mask.min())
        curves = perturbation_curves(model, x, attributions, mask[None].to(device), base, target, steps=steps,
                                     n_random=n_random, seed=seed, fixed_feature=fixed)
    finally:
        model.train(was_training)
    return {"target": target, "localisation": localisation(attributions, case.roi),
            "msfi": msfi(attributions, case.roi, phi), "modality_shapley": dict(zip(case.modalities, phi.tolist())),
            "modality_tau_b": modality_importance_correlation(attributions, phi),
            **curves, "n_evaluations": curves["n_evaluations"] + 2 ** len(case.modalities)}


def plot_curves(metrics: Dict[str, Any], title: str = ""):
    """Matplotlib figure: deletion and insertion curves of the heatmap order and of random orders."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), layout="constrained")
    axes = fig.subplots(1, 2)
    x = metrics["fractions"]
    for ax, kind in zip(axes, ("deletion", "insertion")):
        entry = metrics[kind]
        ax.plot(x, entry["curve"], color="tab:red", label=f"heatmap order (area {entry['area']:.3g})")
        if "random_curve" in entry:
            ax.plot(x, entry["random_curve"], color="tab:gray", ls="--",
                    label=f"random orders (area {entry['random_area']:.3g})")
        ax.set_xlabel(f"fraction of features {'removed' if kind == 'deletion' else 'restored'}")
        ax.set_ylabel("model output (target)")
        ax.set_title(kind, fontsize=9)
        ax.legend(fontsize=7)
    if "delta_aupc" in metrics:
        d = metrics["delta_aupc"]
        title = f"{title}  delta-AUPC: deletion {d['deletion']:.3g}, insertion {d['insertion']:.3g}".strip()
    fig.suptitle(title, fontsize=9)
    return fig
