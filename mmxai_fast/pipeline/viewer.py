"""``viewer.html``: one self-contained page to scroll through a case's heatmaps.

Every modality side by side, each with its signed heatmap on top (the figures' red-white-blue
scale, each method's map scaled to [-1, 1] by its largest magnitude), one row per method; a slice
slider, arrow / PageUp / PageDown keys and the mouse wheel over the axial, coronal or sagittal
axis, an overlay opacity control, the ROI outline, per-modality importance bars and the run
summary. No server, no network, nothing external: the page carries its data.

Packing (what keeps a BraTS case of 4 x 240 x 240 x 155 in a few MB to tens of MB):
- every axis longer than ``max_size`` (default :data:`MAX_SIZE` = 256 voxels) is reduced by an
  integer factor (block mean; ROI: any voxel of the block), since each axis is in-plane in some view;
- images are windowed to the 0.5-99.5th percentile of their foreground and stored as uint8,
  heatmaps as int8 (``round(127 * value)``, value in [-1, 1]);
- each volume is stored ``[Z, Y, X]``, differenced along ``X`` (mod 256), zlib-compressed and
  base64-encoded; the page decodes it with the browser's ``DecompressionStream``.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from .case import Case
from .figures import scale_signed, smooth
from .._validation import int_at_least

__all__ = ["MAX_SIZE", "render_viewer", "write_viewer", "viewer_thumbnail", "template_text"]

#: Longest axis kept in the viewer (voxels); longer axes are reduced by an integer factor.
MAX_SIZE = 256
#: Default overlay opacity, as the figures (alpha = 0.85 * |value|).
DEFAULT_OPACITY = 0.85
_PERCENTILES = (0.5, 99.5)
_PAYLOAD_MARK = "<!--MMXAI_PAYLOAD-->"
_TITLE_MARK = "__MMXAI_TITLE__"
#: What both page templates share: the head (doctype, title, common style rules) and the start of
#: the script (reading the meta payload).
_SHARED_PARTS = (("<!--MMXAI_HEAD-->", "viewer_head.html"), ("<!--MMXAI_SCRIPT_HEAD-->", "viewer_script_head.html"))

Explanations = Union[Any, Sequence[Any], Mapping[str, Any]]


def template_text(name: str = "viewer_template.html") -> str:
    """Text of a page template shipped as package data next to this module, with the parts both
    pages share (:data:`_SHARED_PARTS`) put in."""
    folder = resources.files(__package__)
    text = folder.joinpath(name).read_text(encoding="utf-8")
    for mark, part in _SHARED_PARTS:
        text = text.replace(mark, folder.joinpath(part).read_text(encoding="utf-8").rstrip("\n"), 1)
    return text


def _rows(explanations: Explanations) -> List[Tuple[str, Any]]:
    if isinstance(explanations, Mapping):
        rows = [(str(k), v) for k, v in explanations.items()]
    elif isinstance(explanations, (list, tuple)):
        rows = [(getattr(e, "method", f"row {i}"), e) for i, e in enumerate(explanations)]
    else:
        rows = [(getattr(explanations, "method", "explanation"), explanations)]
    if not rows:
        raise ValueError("explanations must hold at least one explanation, got none")
    seen: Dict[str, int] = {}
    labelled = []
    for label, exp in rows:
        seen[label] = seen.get(label, 0) + 1
        labelled.append((label if seen[label] == 1 else f"{label} ({seen[label]})", exp))
    return labelled


def _check(case: Case, rows: List[Tuple[str, Any]], max_size) -> None:
    if not isinstance(case, Case):
        raise TypeError(f"case must be a Case, got {type(case).__name__}")
    int_at_least(max_size, "max_size", 16)
    image = case.image.detach().cpu().numpy()
    if not np.isfinite(image).all():
        raise ValueError(f"case.image must be finite, got {int((~np.isfinite(image)).sum())} NaN or infinite values")
    for i, (label, exp) in enumerate(rows):
        where = f"explanations[{i}] ({label})"
        attr = getattr(exp, "attributions", None)
        if not isinstance(attr, (torch.Tensor, np.ndarray)):
            raise TypeError(f"{where} must be an Explanation with attributions, got {type(exp).__name__}")
        if tuple(attr.shape) != tuple(case.image.shape):
            raise ValueError(f"{where}.attributions must have the case's shape {tuple(case.image.shape)}, "
                             f"got {tuple(attr.shape)}")
        values = torch.as_tensor(attr).detach().cpu().numpy()
        if not np.isfinite(values).all():
            nan, inf = int(np.isnan(values).sum()), int(np.isinf(values).sum())
            raise ValueError(f"{where}.attributions must be finite, got {nan} NaN and {inf} infinite values")
        names = tuple(getattr(exp, "modalities", ()) or ())
        if names and names != tuple(case.modalities):
            raise ValueError(f"{where}.modalities must be the case's {tuple(case.modalities)}, got {names}")


def _reduce(volume: np.ndarray, factors: Sequence[int], how: str = "mean") -> np.ndarray:
    """Block mean (or max) over ``factors`` along the last three axes; edges padded by repetition."""
    if all(f == 1 for f in factors):
        return volume
    lead = volume.ndim - 3
    pad = [(0, 0)] * lead + [(0, (-n) % f) for n, f in zip(volume.shape[lead:], factors)]
    padded = np.pad(volume, pad, mode="edge")
    shape = list(padded.shape[:lead])
    for n, f in zip(padded.shape[lead:], factors):
        shape += [n // f, f]
    blocks = padded.reshape(shape)
    axes = tuple(lead + 2 * i + 1 for i in range(3))
    return blocks.max(axis=axes) if how == "max" else blocks.mean(axis=axes, dtype=np.float32)


def _window(volume: np.ndarray, foreground: Optional[np.ndarray]) -> Tuple[float, float]:
    values = volume[foreground] if foreground is not None and foreground.any() else volume.ravel()
    step = max(1, values.size // 250_000)  # a sample is enough for a display window
    lo, hi = (float(v) for v in np.percentile(values[::step], _PERCENTILES))
    return lo, (hi if hi > lo else lo + 1.0)


def _scaled(values: np.ndarray) -> np.ndarray:
    """:func:`~mmxai_fast.pipeline.figures.scale_signed` in numpy (free of torch's thread pool)."""
    top = float(np.abs(values).max())
    return values / np.float32(top) if top > 0 else np.zeros_like(values)


def _to_uint8(volume: np.ndarray, lo: float, hi: float) -> np.ndarray:
    scaled = (volume - np.float32(lo)) * np.float32(255.0 / (hi - lo))
    return np.rint(np.clip(scaled, 0, 255, out=scaled), out=scaled).astype(np.uint8)


def _to_int8(heat: np.ndarray) -> np.ndarray:
    scaled = heat * np.float32(127.0)
    return np.clip(np.rint(scaled, out=scaled), -127, 127, out=scaled).astype(np.int8)


def _pack(volume: np.ndarray) -> bytes:
    """``[X, Y, Z]`` uint8/int8 -> ``[Z, Y, X]`` bytes, differenced along X (mod 256), zlib."""
    raw = np.ascontiguousarray(volume.transpose(2, 1, 0)).view(np.uint8)
    delta = np.empty_like(raw)
    delta[..., 0] = raw[..., 0]
    np.subtract(raw[..., 1:], raw[..., :-1], out=delta[..., 1:])
    # Noisy images: run-length matches (the zero background) plus Huffman beat LZ search, faster;
    # heatmaps (superpixels, windows) repeat longer patterns. Level 6 saves 1-10% at 2-3x the time.
    strategy = zlib.Z_RLE if volume.dtype == np.uint8 else zlib.Z_DEFAULT_STRATEGY
    packer = zlib.compressobj(1, zlib.DEFLATED, 15, 9, strategy)
    # ndarray has the buffer protocol; numpy's stubs declare ``__buffer__`` only for Python >= 3.12
    return packer.compress(delta) + packer.flush()  # type: ignore[arg-type]


def _initial_slices(roi: Optional[np.ndarray], heat: np.ndarray) -> List[int]:
    """Per array axis (x, y, z): the slice with the largest ROI area, else largest |heatmap|."""
    weight = roi.astype(np.float64) if roi is not None and roi.any() else np.abs(heat).sum(axis=0, dtype=np.float64)
    out = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        out.append(int(np.argmax(weight.sum(axis=other))))
    return out


def _bwr_lut() -> List[List[int]]:
    """RGB of matplotlib's ``bwr`` for int8 codes -127..127 (value = code / 127), as the figures."""
    from matplotlib import colormaps

    colours = colormaps["bwr"]((np.arange(-127, 128) / 127.0 + 1) / 2)[:, :3]
    return np.round(colours * 255).astype(int).tolist()


def _stderr_summary(exp, peak: float) -> Optional[Dict[str, float]]:
    stderr = getattr(exp, "stderr", None)
    if stderr is None:
        return None
    values = torch.as_tensor(stderr).detach().double().abs().flatten()
    values = values[torch.isfinite(values)]
    if not values.numel():
        return None
    return {"median": float(values.median()), "max": float(values.max()),
            "max_relative_to_peak": float(values.max()) / peak if peak > 0 else None}


def _json_safe(obj: Any) -> Any:
    """Plain JSON values: arrays as lists, other objects as strings, NaN/inf as None."""
    def clean(value):
        if isinstance(value, float):
            return value if math.isfinite(value) else None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, list):
            return [clean(v) for v in value]
        return value

    return clean(json.loads(json.dumps(obj, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o))))


def _payload(case: Case, rows, smooth_sigma, max_size: int, title: str):
    image = case.image.detach().cpu().numpy()
    if image.ndim == 3:  # 2D case: one slice
        image = image[..., None]
    shape = image.shape[1:]
    factors = [max(1, math.ceil(n / max_size)) for n in shape]
    foreground = None if case.foreground is None else case.foreground.cpu().numpy().reshape(shape)
    roi = None if case.roi is None else case.roi.cpu().numpy().reshape(shape)
    small = _reduce(image, factors)
    small_fg = None if foreground is None else _reduce(foreground, factors, "max")
    windows = [_window(m, small_fg) for m in small]
    volumes = [_to_uint8(m, lo, hi) for m, (lo, hi) in zip(small, windows)]
    small_roi = None if roi is None or not roi.any() else _reduce(roi, factors, "max").astype(np.uint8)
    meta_rows, first_heat = [], None
    for label, exp in rows:
        raw = torch.as_tensor(exp.attributions).detach().float().cpu()
        peak = float(np.abs(raw.numpy()).max())
        heat = _reduce(_scaled(smooth(raw, smooth_sigma).numpy()).reshape((-1, *shape)), factors)
        first_heat = heat if first_heat is None else first_heat
        first = len(volumes)
        volumes += [_to_int8(h) for h in heat]
        stats = exp.stats.to_dict() if hasattr(getattr(exp, "stats", None), "to_dict") else {}
        meta_rows.append({
            "label": label, "method": getattr(exp, "method", label), "target": getattr(exp, "target", None),
            "stats": stats, "settings": getattr(exp, "settings", {}) or {}, "peak": peak,
            "importance": dict(getattr(exp, "modality_importance", {}) or {}),
            "stderr": _stderr_summary(exp, peak), "heat": list(range(first, first + len(heat)))})
    if small_roi is not None:
        volumes.append(small_roi)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:  # zlib releases the GIL
        blobs = list(pool.map(_pack, volumes))
    meta = {
        "title": title, "modalities": list(case.modalities), "dims": [int(n) for n in small.shape[1:]],
        "shape": [int(n) for n in case.image.shape[1:]], "factors": factors, "max_size": max_size,
        "spacing": [float(s) * f for s, f in zip((list(case.spacing) + [1.0])[:3], factors)],
        "windows": windows, "images": list(range(len(case.modalities))), "rows": meta_rows,
        "roi": len(volumes) - 1 if small_roi is not None else None,
        "initial": _initial_slices(small_roi, first_heat), "lut": _bwr_lut(), "opacity": DEFAULT_OPACITY,
        "smooth_sigma": smooth_sigma, "percentiles": list(_PERCENTILES),
    }
    return _json_safe(meta), blobs


def _script_json(obj: Any) -> str:
    # Inside <script>, "<" could end the element: escape it (and > &) as JSON unicode escapes.
    text = json.dumps(obj, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def fill_template(template: str, title: str, meta: Any, blobs: Sequence[bytes] = ()) -> bytes:
    """The template with its title and data: meta as JSON, each blob base64 in its own element."""
    parts = [f'<script type="application/json" id="mmxai-meta">{_script_json(meta)}</script>']
    parts += [f'<script type="application/octet-stream" id="mmxai-blob-{i}">'
              f'{base64.b64encode(b).decode("ascii")}</script>' for i, b in enumerate(blobs)]
    page = template.replace(_TITLE_MARK, html.escape(title), 1)
    return page.replace(_PAYLOAD_MARK, "\n".join(parts), 1).encode("utf-8")


def render_viewer(case: Case, explanations: Explanations, *, smooth_sigma: Optional[float] = None,
                  title: Optional[str] = None, max_size: int = MAX_SIZE) -> bytes:
    """The self-contained ``viewer.html`` of one case, in memory.

    Args:
        case: the explained :class:`Case` (``[M, X, Y, Z]`` or 2D ``[M, X, Y]``).
        explanations: one :class:`~mmxai_fast.pipeline.Explanation`, a list of them (rows labelled
            by method) or ``{row label: Explanation}``; all of this case.
        smooth_sigma: Gaussian smoothing of the shown heatmaps (voxels), as the figures.
        title: page title; default ``"<methods>: <first source file>"``.
        max_size: longest axis kept (voxels); longer axes are reduced by an integer factor.

    Returns:
        UTF-8 HTML.

    Raises:
        ValueError: a heatmap not of the image's shape, NaN/infinite heatmaps or image, modality
            names not the case's, ``max_size`` < 16, negative ``smooth_sigma``, no explanation.
        TypeError: ``case`` not a Case or an explanation without attributions.
    """
    rows = _rows(explanations)
    _check(case, rows, max_size)
    if smooth_sigma is not None and smooth_sigma < 0:
        raise ValueError(f"smooth_sigma must be >= 0, got {smooth_sigma}")
    if title is None:
        source = Path(case.sources[0]).name if case.sources else ""
        title = ", ".join(label for label, _ in rows) + (f": {source}" if source else "")
    meta, blobs = _payload(case, rows, smooth_sigma, max_size, str(title))
    return fill_template(template_text(), str(title), meta, blobs)


def write_viewer(case: Case, explanations: Explanations, out_dir: Union[str, os.PathLike], *,
                 filename: str = "viewer.html", **kwargs) -> Path:
    """Render (:func:`render_viewer`, same keyword arguments) and write ``out_dir/filename``
    atomically; nothing is written when rendering fails. Returns the file's path."""
    from .outputs import write_files_atomically

    content = render_viewer(case, explanations, **kwargs)
    return write_files_atomically(out_dir, {filename: content})[filename]


def viewer_thumbnail(case: Case, explanation, *, modality: Optional[Union[int, str]] = None,
                     size: int = 96, smooth_sigma: Optional[float] = None) -> bytes:
    """PNG thumbnail for a cohort index: one modality's axial slice (largest ROI area, else
    largest ``|attribution|``) with the heatmap blended as in the viewer.

    Args:
        modality: index or name; default the modality with the largest importance.
        size: longest side in pixels (nearest-neighbour resampling).
    """
    from matplotlib.image import imsave

    rows = _rows(explanation)
    _check(case, rows[:1], MAX_SIZE)
    exp = rows[0][1]
    names = list(case.modalities)
    if modality is None:
        importance = getattr(exp, "modality_importance", {}) or {}
        m = names.index(max(importance, key=importance.get)) if importance else 0
    elif isinstance(modality, str):
        if modality not in names:
            raise ValueError(f"modality must be one of {names}, got {modality!r}")
        m = names.index(modality)
    else:
        m = int(modality)
    image = case.image.cpu().numpy()
    image = image if image.ndim == 4 else image[..., None]
    heat = scale_signed(smooth(torch.as_tensor(exp.attributions).float(), smooth_sigma)).numpy().reshape(image.shape)
    roi = None if case.roi is None else case.roi.cpu().numpy().reshape(image.shape[1:])
    z = _initial_slices(roi, heat)[2]
    fg = None if case.foreground is None else case.foreground.cpu().numpy().reshape(image.shape[1:])
    lo, hi = _window(image[m], fg)
    grey = _to_uint8(image[m][..., z], lo, hi).T[::-1].astype(np.float32) / 255  # rows = Y up
    value = heat[m][..., z].T[::-1]
    lut = np.asarray(_bwr_lut(), dtype=np.float32) / 255
    colour = lut[_to_int8(value).astype(int) + 127]
    alpha = (np.abs(value) * DEFAULT_OPACITY)[..., None]
    rgb = grey[..., None] * (1 - alpha) + colour * alpha
    step = math.ceil(max(rgb.shape[:2]) / size)
    if step > 1:
        rgb = rgb[::step, ::step]
    else:
        k = max(1, size // max(rgb.shape[:2]))
        rgb = rgb.repeat(k, axis=0).repeat(k, axis=1)
    buffer = io.BytesIO()
    imsave(buffer, np.clip(rgb, 0, 1), format="png")
    return buffer.getvalue()
