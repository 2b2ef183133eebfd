"""Writing an explanation to disk: heatmaps as NIfTI (the input's affine), importance and run
summary as JSON, figures as PNG.

All files are rendered in memory first, then written as temporary files in the output folder and
moved into place with ``os.replace`` only once every one of them was written: an error at any
point removes the temporary files and leaves no new or partial output file behind.
"""
from __future__ import annotations

import gzip
import io
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

import numpy as np

from .case import Case

__all__ = ["write_explanation", "write_files_atomically", "heatmap_filename"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def heatmap_filename(modality: str) -> str:
    """``<modality>_heatmap.nii.gz`` with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return f"{_SAFE.sub('_', modality)}_heatmap.nii.gz"


def write_files_atomically(out_dir: Union[str, os.PathLike], files: Dict[str, bytes]) -> Dict[str, Path]:
    """Write ``{filename: content}`` into ``out_dir`` all-or-nothing.

    Every file goes to a temporary name in ``out_dir`` first; only when all are written are
    they renamed into place (``os.replace``, atomic on one file system). On error every
    temporary file is removed and the error re-raised.

    Returns:
        ``{filename: final path}``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    temps: List[Tuple[str, Path]] = []
    try:
        for name, content in files.items():
            handle, tmp = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            temps.append((name, Path(tmp)))
            with os.fdopen(handle, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        final = {}
        for name, tmp in temps:
            os.replace(tmp, out / name)
            final[name] = out / name
        return final
    finally:
        for _, tmp in temps:
            if tmp.exists():
                tmp.unlink()


def _nifti_bytes(volume: np.ndarray, affine: np.ndarray) -> bytes:
    import nibabel as nib

    img = nib.Nifti1Image(np.asarray(volume, dtype=np.float32), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=6, mtime=0)


def _png_bytes(figure) -> bytes:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=120)
    return buffer.getvalue()


def _json_bytes(payload) -> bytes:
    return (json.dumps(payload, indent=2) + "\n").encode()


def render_explanation(case: Case, explanation, *, slice: Optional[int] = None,
                       smooth_sigma: Optional[float] = None) -> Dict[str, bytes]:
    """Every output file's content, in memory (see :func:`write_explanation`)."""
    from .figures import _display_slice, plot_explanation, plot_modality_importance, scale_signed
    from .viewer import render_viewer

    attributions = explanation.attributions
    if tuple(attributions.shape) != tuple(case.image.shape):
        raise ValueError(f"explanation.attributions must have the case's shape {tuple(case.image.shape)}, "
                         f"got {tuple(attributions.shape)}")
    names = [heatmap_filename(m) for m in case.modalities]
    if len(set(names)) != len(names):
        raise ValueError(f"modality names {case.modalities} give clashing file names {names}")
    index = _display_slice(case, scale_signed(attributions), slice)
    files = {name: _nifti_bytes(attributions[m].numpy(), case.affine) for m, name in enumerate(names)}
    files["importance.json"] = _json_bytes(explanation.modality_importance)
    summary = {
        "method": explanation.method, "target": explanation.target, **explanation.stats.to_dict(),
        "modalities": list(case.modalities), "shape": list(case.image.shape[1:]), "sources": list(case.sources),
        "slice": index, "smooth_sigma": smooth_sigma, "settings": explanation.settings,
        "modality_importance": explanation.modality_importance,
    }
    files["summary.json"] = _json_bytes(summary)
    files["heatmaps.png"] = _png_bytes(plot_explanation(case, explanation, slice=index, smooth_sigma=smooth_sigma))
    files["importance.png"] = _png_bytes(plot_modality_importance(explanation))
    files["viewer.html"] = render_viewer(case, [explanation], smooth_sigma=smooth_sigma)
    return files


def write_explanation(case: Case, explanation, out_dir: Union[str, os.PathLike], *, slice: Optional[int] = None,
                      smooth_sigma: Optional[float] = None) -> Dict[str, Path]:
    """Write one case's explanation into ``out_dir`` (created if needed).

    Files: ``<modality>_heatmap.nii.gz`` (raw float32 attributions, the case's affine),
    ``importance.json`` (``{modality: share}``), ``summary.json`` (method, target, run stats,
    slice, settings), ``heatmaps.png`` (:func:`~mmxai_fast.pipeline.figures.plot_explanation`)
    ``importance.png`` and ``viewer.html`` (:func:`~mmxai_fast.pipeline.viewer.render_viewer`). Everything is rendered and validated before the first byte is written,
    and written all-or-nothing (:func:`write_files_atomically`).

    Args:
        case: the explained case.
        explanation: its :class:`~mmxai_fast.pipeline.Explanation`.
        out_dir: output folder.
        slice: axial slice of the figure; None: largest ROI area, else largest ``|attribution|``.
        smooth_sigma: Gaussian smoothing of the figure's heatmaps (voxels); the NIfTI maps are raw.

    Returns:
        ``{filename: path}``.

    Raises:
        ValueError: attributions not of the case's shape, slice out of range, clashing names.
    """
    return write_files_atomically(out_dir, render_explanation(case, explanation, slice=slice,
                                                              smooth_sigma=smooth_sigma))
