"""From NIfTI files and a trained 3D model to the heatmaps a clinician can look at.

- :func:`load_case` / :func:`load_ct_case`: co-registered modalities (or CT windows) -> :class:`Case`.
- :class:`Superpixels` / :func:`superpixel_mask`: SLIC feature masks on the foreground.
- :class:`Baseline`: zeros, a constant or per-modality Gaussian noise for removed features.
- :func:`explain`: any of the 16 methods of Jin et al. (2023) -> :class:`Explanation`.
- :func:`write_explanation`: NIfTI heatmaps, importance/summary JSON and PNG figures, atomically.
"""
from .baselines import Baseline
from .case import Case, CaseError, derive_foreground, load_case, load_ct_case
from .explain import (GRADIENT_METHODS, METHODS, PERTURBATION_METHODS, Explanation, RunStats, explain,
                      modality_importance, resolve_method)
from .figures import choose_axial_slice, plot_explanation, plot_modality_importance, scale_signed
from .outputs import write_explanation
from .superpixels import Superpixels, superpixel_mask

__all__ = ["Case", "CaseError", "load_case", "load_ct_case", "derive_foreground", "Superpixels",
           "superpixel_mask", "Baseline", "explain", "Explanation", "RunStats", "resolve_method",
           "modality_importance", "METHODS", "PERTURBATION_METHODS", "GRADIENT_METHODS", "scale_signed",
           "choose_axial_slice", "plot_explanation", "plot_modality_importance", "write_explanation"]
