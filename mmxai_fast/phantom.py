"""Synthetic 4-sequence brain MRI with a glioma, for the demo and the tests (nothing is downloaded).

:func:`make_brain_phantom` draws one case: an ellipsoidal head (scalp, skull, CSF, folded grey
matter, white matter, ventricles) in T1, T1ce, T2 and FLAIR with their usual relative contrasts
(T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: T2-like with the CSF suppressed), a smooth
multiplicative bias field and Rician noise. Position, size, folding and contrasts vary with the
seed.

The glioma has a core, a rim around it and surrounding oedema. Its grade is the classification
task of the demo, and the evidence for it is put in one sequence on purpose:

- ``grade="high"`` (glioblastoma-like): the rim *enhances*, i.e. is bright in T1ce only;
- ``grade="low"``: the same lesion without enhancement (in T1ce the rim keeps its T1 intensity);
- ``grade=None``: no lesion.

Both grades draw their lesion from the same distribution and look the same in T1, T2 and FLAIR
(hypointense core in T1, hyperintense lesion and oedema in T2/FLAIR), as in the radiological rule
of thumb that contrast enhancement is what separates high- from low-grade glioma. A classifier of
grade must therefore look at T1ce inside the lesion: an explanation should light up the tumour
and find most of the evidence in T1ce. Same seed, other grade: the identical case except the
rim's T1ce values. The tumour mask (:attr:`BrainPhantom.tumour`) is the whole lesion, core, rim
and oedema (BraTS "whole tumour").

:func:`mni152_anatomy` swaps the synthetic head for the MNI152 templates shipped with nilearn.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np
import torch
from torch import Tensor

__all__ = ["MODALITIES", "TISSUES", "GRADES", "BrainPhantom", "make_brain_phantom", "make_phantom_dataset",
           "mni152_anatomy"]

MODALITIES: Tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Tissue label values of :attr:`BrainPhantom.labels`.
TISSUES = {"background": 0, "scalp": 1, "skull": 2, "csf": 3, "grey_matter": 4, "white_matter": 5,
           "oedema": 6, "tumour_rim": 7, "tumour_core": 8}

GRADES = ("low", "high")

# Mean intensity per tissue and sequence (T1, T1ce, T2, FLAIR), arbitrary units near 1. The
# enhancing rim's T1ce value is used only for high grade; otherwise the rim takes the T1 value.
_CONTRAST = {
    "background":   (0.00, 0.00, 0.00, 0.00),
    "scalp":        (0.75, 0.75, 0.45, 0.55),
    "skull":        (0.08, 0.08, 0.06, 0.06),
    "csf":          (0.20, 0.20, 1.00, 0.10),
    "grey_matter":  (0.58, 0.58, 0.55, 0.58),
    "white_matter": (0.85, 0.85, 0.36, 0.42),
    "oedema":       (0.48, 0.48, 0.82, 0.90),
    "tumour_rim":   (0.45, 0.45, 0.70, 0.75),
    "tumour_core":  (0.30, 0.30, 0.88, 0.70),
}
_ENHANCING_RIM_T1CE = 1.35


@dataclass(frozen=True)
class BrainPhantom:
    """One synthetic case.

    Attributes:
        image: float32 ``[4, X, Y, Z]`` in the order of :data:`MODALITIES` (axial = last axis).
        modalities: ``MODALITIES``.
        brain: bool ``[X, Y, Z]``, the intracranial volume (CSF, grey and white matter, lesion).
        tumour: bool ``[X, Y, Z]``, the whole lesion (core, rim and oedema: BraTS "whole tumour");
            all False without a tumour.
        labels: uint8 ``[X, Y, Z]`` tissue labels, values of :data:`TISSUES`.
        grade: ``"high"``, ``"low"`` or None (no tumour).
    """

    image: Tensor
    modalities: Tuple[str, ...]
    brain: Tensor
    tumour: Tensor
    labels: Tensor
    grade: Optional[str]

    @property
    def head(self) -> Tensor:
        """bool ``[X, Y, Z]``: the head (everything but the air around it), the foreground."""
        return self.labels > 0

    @property
    def enhancing(self) -> Tensor:
        """bool ``[X, Y, Z]``: the enhancing rim (empty unless ``grade == "high"``)."""
        if self.grade != "high":
            return torch.zeros_like(self.tumour)
        return self.labels == TISSUES["tumour_rim"]


def _check_shape(shape) -> Tuple[int, int, int]:
    if (not isinstance(shape, (tuple, list)) or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)):
        raise ValueError(f"shape must be three ints (X, Y, Z), got {shape!r}")
    if min(shape) < 16:
        raise ValueError(f"shape must be at least 16 voxels along every axis, got {tuple(shape)}")
    return tuple(shape)


def _folded_radius(direction: np.ndarray, rng: np.random.Generator, amplitude: float, waves: int,
                   frequency: Tuple[float, float] = (2.0, 6.0)) -> np.ndarray:
    """``1 + amplitude * (sum of random plane waves over the unit direction)``: a lumpy sphere."""
    out = np.zeros(direction.shape[1:], np.float32)
    for _ in range(waves):
        k = (rng.normal(size=3) / np.sqrt(3) * rng.uniform(*frequency)).astype(np.float32)
        phase = np.float32(rng.uniform(0, 2 * np.pi))
        out += np.cos(k[0] * direction[0] + k[1] * direction[1] + k[2] * direction[2] + phase)
    return 1.0 + amplitude * out / np.sqrt(waves)


def _bias_field(grid: np.ndarray, rng: np.random.Generator, strength: float) -> np.ndarray:
    """Smooth multiplicative field ``exp(quadratic polynomial)``, about ``1 +- strength``."""
    x, y, z = grid
    terms = [x, y, z, x * y, y * z, x * z, x * x, y * y, z * z]
    coeffs = rng.normal(size=len(terms)) * strength / 3
    log_field = sum(c * t for c, t in zip(coeffs, terms))
    return np.exp(log_field).astype(np.float32)


def _synthetic_head(grid: np.ndarray, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray, float]:
    """Tissue labels of an ellipsoidal head with a random size, offset and cortical folding.

    Returns ``(labels, rel, vox)``: ``rel`` are coordinates scaled so that the head's surface is the
    unit sphere, ``vox`` one voxel in those units.
    """
    shape = grid.shape[1:]
    centre = rng.uniform(-0.04, 0.04, 3).astype(np.float32)
    semi = np.array([0.86, 0.94, 0.86], np.float32) * rng.uniform(0.95, 1.04, 3).astype(np.float32)
    rel = (grid - centre[:, None, None, None]) / semi[:, None, None, None]
    r = np.sqrt((rel ** 2).sum(0)) + 1e-6  # 1 on the head's surface
    direction = rel / r

    labels = np.zeros(shape, np.uint8)
    vox = 2.0 / min(shape) / float(semi.min())
    labels[r <= 1.0] = TISSUES["scalp"]
    labels[r <= 1.0 - 1.8 * vox] = TISSUES["skull"]
    brain_r = 1.0 - 3.4 * vox
    labels[r <= brain_r] = TISSUES["csf"]
    cortex = brain_r - 1.0 * vox
    labels[r <= cortex * _folded_radius(direction, rng, 0.03, 6)] = TISSUES["grey_matter"]
    labels[r <= (cortex - 2.5 * vox) * _folded_radius(direction, rng, 0.07, 12, (8.0, 16.0))] = TISSUES["white_matter"]
    # Two lateral ventricles beside the midline (x = 0 separates the hemispheres).
    for side in (-1, 1):
        v = (rel - np.array([0.13 * side, 0.05, 0.08], np.float32)[:, None, None, None]) / \
            np.array([0.07, 0.28, 0.14], np.float32)[:, None, None, None]
        labels[(v ** 2).sum(0) <= 1.0] = TISSUES["csf"]
    return labels, rel, vox


def _given_head(anatomy, grid: np.ndarray, shape) -> Tuple[np.ndarray, np.ndarray, float]:
    """Like :func:`_synthetic_head` for fixed tissue labels (e.g. :func:`mni152_anatomy`)."""
    labels = np.array(anatomy, dtype=np.uint8, copy=True)
    if labels.shape != tuple(shape):
        raise ValueError(f"anatomy must have shape {tuple(shape)}, got {labels.shape}")
    if not (labels == TISSUES["white_matter"]).any():
        raise ValueError("anatomy must contain white matter (label "
                         f"{TISSUES['white_matter']}) to place a tumour in")
    if labels.max() >= TISSUES["oedema"]:
        raise ValueError(f"anatomy labels must be below {TISSUES['oedema']} (no lesion), got max {labels.max()}")
    head = labels > 0
    coords = grid[:, head]
    centre = (coords.max(1) + coords.min(1)) / 2
    semi = (coords.max(1) - coords.min(1)) / 2
    rel = (grid - centre[:, None, None, None]) / semi[:, None, None, None]
    return labels, rel.astype(np.float32), 2.0 / min(shape) / float(semi.min())


def make_brain_phantom(shape: Sequence[int] = (48, 48, 48), grade: Optional[str] = "high", seed: int = 0,
                       noise: float = 0.03, bias: float = 0.15, anatomy=None) -> BrainPhantom:
    """Draw one synthetic brain MRI case (T1, T1ce, T2, FLAIR) with or without a glioma.

    Args:
        shape: volume size ``(X, Y, Z)``, each >= 16 (the head fills about 90% of it).
        grade: ``"high"`` (enhancing rim in T1ce), ``"low"`` (same lesion, no enhancement) or None
            (no tumour).
        seed: seeds everything random (anatomy, lesion, contrasts, bias field, noise).
        noise: Rician noise level (standard deviation of each Gaussian component).
        bias: strength of the multiplicative bias field (0 disables it).
        anatomy: optional uint8 tissue labels ``[X, Y, Z]`` (values of :data:`TISSUES` up to
            white matter) used instead of the random synthetic head, e.g. :func:`mni152_anatomy`.

    Returns:
        :class:`BrainPhantom` (float32 image ``[4, X, Y, Z]``, bool masks ``[X, Y, Z]``).

    Raises:
        ValueError: bad ``shape``, ``grade``, ``noise``, ``bias`` or ``anatomy``.
    """
    shape = _check_shape(shape)
    if grade not in (None, *GRADES):
        raise ValueError(f"grade must be 'high', 'low' or None, got {grade!r}")
    if not noise >= 0 or not bias >= 0:
        raise ValueError(f"noise and bias must be >= 0, got noise={noise!r}, bias={bias!r}")
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1, 1, n, dtype=np.float32) for n in shape]
    grid = np.stack(np.meshgrid(*axes, indexing="ij"))  # normalised coordinates in [-1, 1]
    if anatomy is None:
        labels, rel, vox = _synthetic_head(grid, rng)
    else:
        labels, rel, vox = _given_head(anatomy, grid, shape)
    brain = labels >= TISSUES["csf"]

    if grade is not None:
        _add_glioma(labels, rel, rng, vox)
    tumour = labels >= TISSUES["oedema"]

    contrast = np.array([_CONTRAST[name] for name in TISSUES], np.float32)  # [tissues, 4]
    contrast *= rng.uniform(0.92, 1.08, (1, 4)).astype(np.float32)  # scanner-to-scanner gain
    enhancement = _ENHANCING_RIM_T1CE * rng.uniform(0.9, 1.1)  # drawn for every grade: same seed, same case
    if grade == "high":
        contrast[TISSUES["tumour_rim"], 1] = enhancement
    image = np.stack([contrast[:, c][labels] for c in range(len(MODALITIES))])  # [4, X, Y, Z]
    # Within-tissue texture (mild), the bias field (shared by the sequences) and Rician noise.
    texture = rng.standard_normal(image.shape, dtype=np.float32)
    texture *= 0.03
    texture += 1
    if bias > 0:
        texture *= _bias_field(grid, rng, bias)
    image *= texture
    if noise > 0:
        image += noise * rng.standard_normal(image.shape, dtype=np.float32)
        imag = rng.standard_normal(image.shape, dtype=np.float32)
        imag *= noise
        np.sqrt(image * image + imag * imag, out=image)
    return BrainPhantom(image=torch.from_numpy(np.ascontiguousarray(image, np.float32)), modalities=MODALITIES,
                        brain=torch.from_numpy(brain), tumour=torch.from_numpy(tumour),
                        labels=torch.from_numpy(labels), grade=grade)


def _add_glioma(labels: np.ndarray, rel: np.ndarray, rng: np.random.Generator, vox: float) -> None:
    """Paint oedema, rim and core (in place) around a random centre inside one hemisphere's white matter."""
    wm = np.argwhere(labels == TISSUES["white_matter"])
    coords = rel[:, wm[:, 0], wm[:, 1], wm[:, 2]]
    # Away from the midline and the ventricles, not too close to the cortex.
    ok = (np.abs(coords[0]) > 0.25) & (np.sqrt((coords ** 2).sum(0)) < 0.62)
    pick = wm[ok][rng.integers(ok.sum())] if ok.any() else wm[rng.integers(len(wm))]
    centre = rel[:, pick[0], pick[1], pick[2]]
    d = rel - centre[:, None, None, None]
    dist = np.sqrt((d ** 2).sum(0)) + 1e-6
    direction = d / dist
    # Sizes in head radii, so the lesion keeps its proportions at any resolution; the rim stays at
    # least 1.5 voxels thick so that it is resolved.
    core_r = rng.uniform(0.10, 0.17)
    rim_r = core_r + max(1.5 * vox, rng.uniform(0.06, 0.09))
    oedema_r = rim_r + rng.uniform(0.12, 0.22)
    parenchyma = (labels == TISSUES["grey_matter"]) | (labels == TISSUES["white_matter"])
    oedema = (dist <= oedema_r * _folded_radius(direction, rng, 0.15, 5)) & parenchyma
    lumpy = _folded_radius(direction, rng, 0.08, 4)
    labels[oedema] = TISSUES["oedema"]
    labels[dist <= rim_r * lumpy] = TISSUES["tumour_rim"]
    labels[dist <= core_r * lumpy] = TISSUES["tumour_core"]


def make_phantom_dataset(n: int, shape: Sequence[int] = (48, 48, 48), seed: int = 0,
                         grades: Sequence[Optional[str]] = GRADES, anatomy=None, show_progress: bool = False
                         ) -> Tuple[Tensor, Tensor, list]:
    """``n`` phantoms with the grades taken in turn from ``grades`` (balanced classes).

    Args:
        n: number of cases (>= 1).
        shape: volume size ``(X, Y, Z)``.
        seed: case ``i`` uses seed ``seed * 1_000_003 + i`` (disjoint sets for distinct seeds).
        grades: the classes, in label order (label ``k`` is ``grades[k]``).
        anatomy: optional fixed tissue labels (see :func:`make_brain_phantom`).
        show_progress: tqdm progress bar.

    Returns:
        ``(images [n, 4, X, Y, Z] float32, labels [n] int64, phantoms list[BrainPhantom])``.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    from tqdm.auto import tqdm

    phantoms = [make_brain_phantom(shape, grade=grades[i % len(grades)], seed=seed * 1_000_003 + i,
                                  anatomy=anatomy)
                for i in tqdm(range(n), desc="phantoms", disable=not show_progress, leave=False)]
    images = torch.stack([p.image for p in phantoms])
    targets = torch.tensor([i % len(grades) for i in range(n)], dtype=torch.int64)
    return images, targets, phantoms


def mni152_anatomy(shape: Sequence[int] = (48, 48, 48)) -> np.ndarray:
    """Tissue labels from the MNI152 (ICBM 2009) templates that ship inside nilearn (no download).

    Grey and white matter are where their template probability is the larger one and above 0.3,
    the rest of the brain mask is CSF; scalp and skull are shells grown around the brain (the
    templates are skull-stripped). The volume is cropped to the head and resampled to ``shape``.

    Args:
        shape: output size ``(X, Y, Z)`` (RAS axes, axial = last).

    Returns:
        uint8 ``[X, Y, Z]`` labels for :func:`make_brain_phantom`'s ``anatomy``.

    Raises:
        ImportError: nilearn is not installed (``pip install nilearn``).
    """
    shape = _check_shape(shape)
    try:
        from nilearn import datasets
    except ImportError as err:  # optional: nilearn pulls pandas, scikit-learn, joblib...
        raise ImportError("anatomy 'mni152' needs nilearn, which ships the MNI152 templates: "
                          "pip install nilearn (or use the default synthetic anatomy)") from err
    from scipy import ndimage

    brain = np.asarray(datasets.load_mni152_brain_mask(resolution=2).get_fdata()) > 0.5
    gm = np.asarray(datasets.load_mni152_gm_template(resolution=2).get_fdata(), np.float32)
    wm = np.asarray(datasets.load_mni152_wm_template(resolution=2).get_fdata(), np.float32)
    labels: np.ndarray = np.zeros(brain.shape, np.uint8)
    # Scalp and skull as shells of about 3 and 2.5 mm around the brain (2 mm voxels).
    head = ndimage.binary_dilation(brain, iterations=3)
    labels[head] = TISSUES["scalp"]
    labels[ndimage.binary_dilation(brain, iterations=2)] = TISSUES["skull"]
    labels[brain] = TISSUES["csf"]
    labels[brain & (gm >= wm) & (gm > 0.3)] = TISSUES["grey_matter"]
    labels[brain & (wm > gm) & (wm > 0.3)] = TISSUES["white_matter"]
    box = tuple(slice(i.min(), i.max() + 1) for i in np.nonzero(head))
    labels = labels[box]
    zoom = [s / n for s, n in zip(shape, labels.shape)]
    return ndimage.zoom(labels, zoom, order=0, grid_mode=True, mode="nearest")[:shape[0], :shape[1], :shape[2]]
