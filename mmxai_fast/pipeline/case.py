"""A case to explain: co-registered modalities loaded from NIfTI files (:func:`load_case`,
:func:`load_ct_case`).

Arrays keep nibabel's order ``[X, Y, Z]`` (axial slices along the last axis ``Z``); the modalities
are stacked in front, so ``Case.image`` is ``[M, X, Y, Z]`` (``[M, X, Y]`` for 2D images).
Every loading error is a :class:`CaseError` naming the file(s) and what was expected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence, Tuple, Union, cast

import numpy as np
import torch
from torch import Tensor

__all__ = ["Case", "CaseError", "load_case", "load_ct_case", "derive_foreground", "zscore",
           "NORMALIZATIONS"]

PathLike = Union[str, os.PathLike]
#: Largest difference between two affines still read as the same grid (mm).
AFFINE_ATOL = 1e-4
NORMALIZATIONS = (None, "zscore")


class CaseError(ValueError):
    """A case cannot be loaded (missing or unreadable file, mismatching grids, empty mask...)."""


@dataclass
class Case:
    """Co-registered modalities of one subject.

    Attributes:
        image: float32 ``[M, X, Y, Z]`` (or ``[M, X, Y]``), modality first, nibabel array order.
        modalities: the ``M`` modality names (``"t1"``, ``"flair"``, a CT window name...).
        affine: ``(4, 4)`` voxel-to-world matrix shared by all modalities.
        foreground: bool ``[X, Y, Z]`` body/brain mask, or None (everything is foreground).
        roi: bool ``[X, Y, Z]`` tumour/region-of-interest mask, or None.
        sources: the file each modality came from.
    """

    image: Tensor
    modalities: Tuple[str, ...]
    affine: np.ndarray
    foreground: Optional[Tensor] = None
    roi: Optional[Tensor] = None
    sources: Tuple[str, ...] = ()

    def __post_init__(self):
        if not isinstance(self.image, Tensor) or self.image.dim() not in (3, 4):
            raise CaseError(f"Case.image must be a [M, X, Y(, Z)] tensor, got "
                            f"{getattr(self.image, 'shape', type(self.image).__name__)}")
        if self.image.is_complex() or self.image.dtype == torch.bool:
            raise CaseError(f"Case.image must have a real dtype, got {self.image.dtype}")
        if self.image.numel() == 0:
            raise CaseError(f"Case.image must have no empty dim, got shape {tuple(self.image.shape)}")
        self.image = self.image.float()
        if not bool(torch.isfinite(self.image).all()):
            raise CaseError(f"Case.image must be finite, got {int((~torch.isfinite(self.image)).sum())} NaN or "
                            f"infinite values (or values beyond float32's range)")
        self.modalities = tuple(self.modalities)
        if len(self.modalities) != self.image.shape[0]:
            raise CaseError(f"Case.modalities must name the {self.image.shape[0]} modalities of image, "
                            f"got {len(self.modalities)}: {self.modalities}")
        if len(set(self.modalities)) != len(self.modalities):
            raise CaseError(f"Case.modalities must be unique, got {self.modalities}")
        self.affine = np.asarray(self.affine, dtype=np.float64)
        _check_affine(self.affine, "Case.affine")
        for name in ("foreground", "roi"):
            mask = getattr(self, name)
            if mask is not None:
                if tuple(mask.shape) != self.spatial_shape:
                    raise CaseError(f"Case.{name} must have the image's spatial shape {self.spatial_shape}, "
                                    f"got {tuple(mask.shape)}")
                setattr(self, name, torch.as_tensor(mask).bool())

    @property
    def spatial_shape(self) -> Tuple[int, ...]:
        return tuple(self.image.shape[1:])

    @property
    def spacing(self) -> Tuple[float, ...]:
        """Voxel size along each array axis (mm), from the affine's column norms."""
        zooms = np.sqrt((self.affine[:3, :3] ** 2).sum(axis=0))
        return tuple(float(z) for z in zooms[: len(self.spatial_shape)])


def _check_affine(affine: np.ndarray, what: str) -> None:
    if affine.shape != (4, 4):
        raise CaseError(f"{what} must be a (4, 4) matrix, got shape {affine.shape}")
    if not np.isfinite(affine).all():
        raise CaseError(f"{what} must be finite, got {affine.tolist()}")
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    if not zooms.min() > 0 or abs(np.linalg.det(affine[:3, :3] / zooms)) < 1e-6:
        raise CaseError(f"{what} must be invertible (non-zero voxel sizes, independent axes), got "
                        f"{affine[:3, :3].tolist()}")


def _load_image(path: PathLike, what: str):
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    path = Path(path)
    if not path.is_file():
        raise CaseError(f"{what}: file {str(path)!r} does not exist")
    try:
        img = cast(SpatialImage, nib.load(str(path)))  # NIfTI: ``load`` is typed as the base FileBasedImage
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except Exception as exc:  # nibabel raises several types for unreadable files
        raise CaseError(f"{what}: {str(path)!r} is not a readable NIfTI image ({exc})") from exc
    if data.size == 0:
        raise CaseError(f"{what}: {str(path)!r} has an empty dim, shape {data.shape}")
    affine = np.asarray(img.affine, dtype=np.float64)
    _check_affine(affine, f"{what}: the affine of {str(path)!r}")
    return data, affine


def _check_finite(data: np.ndarray, what: str, path) -> None:
    if not np.isfinite(data).all():
        raise CaseError(f"{what}: {str(path)!r} contains NaN or infinite values")


def _same_grid(shape_a, affine_a, path_a, shape_b, affine_b, path_b, what: str) -> None:
    if tuple(shape_a) != tuple(shape_b):
        raise CaseError(f"{what}: {str(path_b)!r} has shape {tuple(shape_b)} but {str(path_a)!r} has "
                        f"{tuple(shape_a)}; all files of a case must share one voxel grid")
    if not np.allclose(affine_a, affine_b, rtol=0, atol=AFFINE_ATOL):
        raise CaseError(f"{what}: {str(path_b)!r} has a different affine than {str(path_a)!r} "
                        f"(max difference {np.abs(affine_a - affine_b).max():.3g}); the modalities must be "
                        f"co-registered and resampled to one grid")


def _squeeze_volume(data: np.ndarray, what: str, path) -> np.ndarray:
    # (X, Y, Z, 1) files are common (single-frame 4D NIfTI): read them as 3D.
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim not in (2, 3):
        raise CaseError(f"{what}: {str(path)!r} must be a 2D or 3D volume, got shape {data.shape} "
                        f"(pass a 4D file as the single image argument instead)")
    return data


def _load_mask(path, what: str, shape, affine, ref_path) -> Optional[Tensor]:
    if path is None:
        return None
    if not isinstance(path, (str, os.PathLike)):  # an array or tensor on the case's grid
        mask = torch.as_tensor(np.asarray(path) if not isinstance(path, Tensor) else path).bool().cpu()
        if tuple(mask.shape) != tuple(shape):
            raise CaseError(f"{what}: the mask's shape {tuple(mask.shape)} differs from the image's {tuple(shape)}")
        return mask
    data, mask_affine = _load_image(path, what)
    data = _squeeze_volume(data, what, path)
    _check_finite(data, what, path)
    _same_grid(shape, affine, ref_path, data.shape, mask_affine, path, what)
    return torch.from_numpy(data > 0.5)


def derive_foreground(image: Tensor) -> Tensor:
    """Foreground (brain/body) mask from the intensities of ``image`` ``[M, *S]``.

    Per modality: when at least 5% of the voxels hold exactly the minimum (skull-stripped or
    zero-padded data such as BraTS) the foreground is every other voxel, the rule nnU-Net uses;
    otherwise (noisy background) it is the largest connected region of voxels above
    ``min + 10% of (99th percentile - min)`` (noise speckles dropped). The union over modalities
    is taken and enclosed holes are filled (ventricles).

    Returns:
        bool ``[*S]``.
    """
    from scipy import ndimage

    masks = []
    for channel in image.detach().cpu().numpy():
        low = channel.min()
        at_min = channel == low
        if at_min.mean() >= 0.05:
            masks.append(~at_min)
        else:
            high = np.percentile(channel, 99)
            bright, count = ndimage.label(channel > low + 0.1 * (high - low))
            if count > 1:
                sizes = np.bincount(bright.ravel())[1:]
                bright = bright == 1 + int(sizes.argmax())
            masks.append(bright > 0)
    foreground = ndimage.binary_fill_holes(np.logical_or.reduce(masks))
    return torch.from_numpy(np.ascontiguousarray(foreground))


def zscore(image: Tensor, foreground: Optional[Tensor], modalities: Sequence[str]) -> Tensor:
    """Per-modality z-score inside the foreground; background voxels set to 0 (nnU-Net's rule).

    Raises:
        CaseError: a modality is constant inside the foreground.
    """
    out = torch.zeros_like(image)
    fg = torch.ones(image.shape[1:], dtype=torch.bool) if foreground is None else foreground
    for m, name in enumerate(modalities):
        values = image[m][fg].double()
        std = float(values.std(unbiased=False)) if values.numel() else 0.0
        if not std > 0:
            raise CaseError(f"normalize='zscore': modality {name!r} is constant inside the foreground")
        out[m][fg] = ((values - values.mean()) / std).float()
    return out


def _finish(image: Tensor, names, affine, sources, roi, foreground, ref_path, normalize) -> Case:
    if normalize not in NORMALIZATIONS:
        raise CaseError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    shape = tuple(image.shape[1:])
    roi_mask = _load_mask(roi, "roi", shape, affine, ref_path)
    fg = derive_foreground(image) if foreground is None else _load_mask(foreground, "foreground", shape, affine,
                                                                          ref_path)
    if not bool(fg.any()):
        source = ("derived from the intensities" if foreground is None else
                  f"from {str(foreground)!r}" if isinstance(foreground, (str, os.PathLike)) else "given")
        raise CaseError(f"foreground: the mask {source} is empty; pass a brain/body mask")
    if normalize == "zscore":
        image = zscore(image, fg, names)
    return Case(image=image, modalities=tuple(names), affine=affine, foreground=fg, roi=roi_mask,
                sources=tuple(sources))


def load_case(modalities: Union[Mapping[str, PathLike], PathLike], roi: Optional[PathLike] = None,
              foreground: Optional[PathLike] = None, normalize: Optional[str] = None,
              names: Optional[Sequence[str]] = None) -> Case:
    """Load co-registered modalities from NIfTI files.

    Args:
        modalities: ``{name: path}``, one 2D/3D file per modality (e.g. t1, t1ce, t2, flair), or
            the path of one 4D file whose last axis holds the modalities.
        roi: optional tumour/ROI mask file (voxels > 0.5 are inside) on the same grid, or a
            bool array/tensor ``[X, Y, Z]``.
        foreground: optional brain/body mask (file, or array/tensor); None derives it from the
            intensities (:func:`derive_foreground`).
        normalize: None (keep intensities) or ``"zscore"`` (per modality inside the foreground,
            background 0); choose what the model was trained with.
        names: modality names for a 4D file (default ``channel0``, ``channel1``...).

    Returns:
        :class:`Case` with ``image`` ``[M, X, Y, Z]`` float32.

    Raises:
        CaseError: missing/unreadable file, no modality, non-finite values, a file whose shape or
            affine differs from the first one's (both files named), wrong number of names, empty
            foreground, constant modality with ``zscore``.
    """
    if isinstance(modalities, Mapping):
        if not modalities:
            raise CaseError("modalities: give at least one {name: path} entry")
        if names is not None:
            raise CaseError("names: only for a single 4D file; with a mapping the keys are the names")
        arrays, sources, ref_shape, ref_affine, ref_path = [], [], None, None, None
        for name, path in modalities.items():
            what = f"modality {name!r}"
            data, affine = _load_image(path, what)
            data = _squeeze_volume(data, what, path)
            _check_finite(data, what, path)
            if ref_shape is None:
                ref_shape, ref_affine, ref_path = data.shape, affine, path
            else:
                _same_grid(ref_shape, ref_affine, ref_path, data.shape, affine, path, what)
            arrays.append(data)
            sources.append(str(path))
        image = torch.from_numpy(np.stack(arrays)).float()
        names = tuple(modalities)
    else:
        path = modalities
        data, ref_affine = _load_image(path, "image")
        if data.ndim != 4:
            raise CaseError(f"image: {str(path)!r} must be 4D [X, Y, Z, modalities], got shape {data.shape}; "
                            f"pass single volumes as a {{name: path}} mapping")
        _check_finite(data, "image", path)
        count = data.shape[-1]
        names = tuple(names) if names is not None else tuple(f"channel{i}" for i in range(count))
        if len(names) != count:
            raise CaseError(f"names: {str(path)!r} holds {count} modalities, got {len(names)} names {names}")
        image = torch.from_numpy(np.ascontiguousarray(np.moveaxis(data, -1, 0))).float()
        sources, ref_path = (str(path),) * count, path
    return _finish(image, names, ref_affine, sources, roi, foreground, ref_path, normalize)


def _window_name(window) -> str:
    from ..ops.hu_window import HU_WINDOW_PRESETS, HUWindow

    if isinstance(window, str):
        return window
    if not isinstance(window, HUWindow):
        window = HUWindow(float(window[0]), float(window[1]))
    for name, preset in HU_WINDOW_PRESETS.items():
        if preset == window:
            return name
    return f"L{window.level:g}W{window.width:g}"


def load_ct_case(path: PathLike, windows: Sequence = ("brain", "subdural", "bone"), roi: Optional[PathLike] = None,
                 foreground: Optional[PathLike] = None) -> Case:
    """Load a CT volume in Hounsfield units and expand it into window channels.

    Each window (:func:`mmxai_fast.ops.hu_window`, values in [0, 1]) becomes one modality, named
    after its preset (or ``L<level>W<width>``).

    Args:
        path: 3D NIfTI in HU (nibabel applies the file's slope/intercept).
        windows: preset names from :data:`~mmxai_fast.ops.HU_WINDOW_PRESETS`,
            :class:`~mmxai_fast.ops.HUWindow` objects or ``(level, width)`` pairs.
        roi: optional ROI mask file.
        foreground: optional body mask file; None: voxels above -500 HU (not air), holes filled.

    Returns:
        :class:`Case` with ``image`` ``[W, X, Y, Z]``.

    Raises:
        CaseError: as :func:`load_case`; ValueError: unknown window preset.
    """
    from scipy import ndimage

    from ..ops.hu_window import hu_window, parse_windows

    data, affine = _load_image(path, "ct")
    data = _squeeze_volume(data, "ct", path)
    _check_finite(data, "ct", path)
    if isinstance(windows, (str, tuple)) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows):
        windows = [windows]
    elif isinstance(windows, str):
        windows = [windows]
    parsed = parse_windows(list(windows))
    if not parsed:
        raise CaseError("windows: give at least one CT window")
    names = tuple(_window_name(w) for w in windows)
    hu = torch.from_numpy(data)
    image = hu_window(hu, parsed)
    if foreground is None:
        foreground = ndimage.binary_fill_holes(data > -500)
    return _finish(image, names, affine, (str(path),) * len(names), roi, foreground, path, None)
