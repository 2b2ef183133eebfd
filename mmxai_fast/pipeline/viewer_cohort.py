"""``index.html`` of a cohort: one row per case (thumbnail, name, summary values) linking to the
case's ``viewer.html``; sortable by name and by any summary value (in the page, no network).

    write_cohort_index("cohort_out", [
        {"name": "BraTS_001", "viewer_relpath": "BraTS_001/viewer.html",
         "thumbnail": viewer_thumbnail(case, explanation),          # PNG bytes, or an image array
         "summary": {"p_high": 0.93, "t1ce share": 0.61, "wall_s": 41.2}},
        ...])
"""
from __future__ import annotations

import base64
import io
import os
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from .viewer import fill_template, template_text

__all__ = ["cohort_index_html", "write_cohort_index"]

_PNG = b"\x89PNG\r\n\x1a\n"


def _thumbnail_png(value: Any, where: str) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, (bytes, bytearray)):
        if not bytes(value).startswith(_PNG):
            raise ValueError(f"{where} must be PNG bytes (or an image array), got {len(value)} bytes without "
                             f"the PNG signature")
        return bytes(value)
    array = np.asarray(value)
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)) or not array.size:
        raise ValueError(f"{where} must be an [H, W], [H, W, 3] or [H, W, 4] image, got shape {array.shape}")
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise ValueError(f"{where} must be uint8 or floats in [0, 1], got values in "
                             f"[{np.nanmin(array):.3g}, {np.nanmax(array):.3g}]")
    from matplotlib.image import imsave

    buffer = io.BytesIO()
    imsave(buffer, array, format="png", cmap="gray", vmin=0, vmax=255 if array.dtype == np.uint8 else 1)
    return buffer.getvalue()


def _relative_link(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValueError(f"{where} must be a non-empty relative path string, got {value!r}")
    if value.startswith(("/", "\\")) or ":" in value.split("/")[0]:
        raise ValueError(f"{where} must be a path relative to the index (e.g. 'case1/viewer.html'), got {value!r}")
    return value.replace(os.sep, "/")


def _scalar(value: Any, where: str):
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, float, np.integer, np.floating)):
        number = float(value)
        return number if np.isfinite(number) else None
    raise ValueError(f"{where} must be a number, string, bool or None, got {type(value).__name__}")


def _rows(cases: Sequence[Mapping[str, Any]]) -> List[Dict[str, Any]]:
    if isinstance(cases, (str, bytes, Mapping)) or not isinstance(cases, Sequence):
        raise TypeError(f"cases must be a list of dicts, got {type(cases).__name__}")
    rows, names = [], set()
    for i, case in enumerate(cases):
        where = f"cases[{i}]"
        if not isinstance(case, Mapping):
            raise TypeError(f"{where} must be a dict with name, viewer_relpath, thumbnail, summary; "
                            f"got {type(case).__name__}")
        unknown = set(case) - {"name", "viewer_relpath", "thumbnail", "thumbnail_png", "summary"}
        if unknown:
            raise ValueError(f"{where} has unknown keys {sorted(unknown)}; expected name, viewer_relpath, "
                             f"thumbnail, summary")
        name = case.get("name")
        if not isinstance(name, str) or not name:
            raise ValueError(f"{where}['name'] must be a non-empty string, got {name!r}")
        if name in names:
            raise ValueError(f"{where}['name'] must be unique, got {name!r} twice")
        names.add(name)
        summary = case.get("summary") or {}
        if not isinstance(summary, Mapping):
            raise ValueError(f"{where}['summary'] must be a dict, got {type(summary).__name__}")
        png = _thumbnail_png(case.get("thumbnail", case.get("thumbnail_png")), f"{where}['thumbnail']")
        rows.append({
            "name": name, "href": _relative_link(case.get("viewer_relpath"), f"{where}['viewer_relpath']"),
            "thumbnail": None if png is None else base64.b64encode(png).decode("ascii"),
            "summary": {str(k): _scalar(v, f"{where}['summary'][{k!r}]") for k, v in summary.items()}})
    return rows


def cohort_index_html(cases: Sequence[Mapping[str, Any]], *, title: str = "mmxai-fast cohort",
                      sort_by: Optional[str] = None) -> bytes:
    """The cohort's ``index.html``, in memory.

    Args:
        cases: one dict per case: ``name`` (unique str), ``viewer_relpath`` (the case's viewer,
            relative to the index, e.g. ``"case1/viewer.html"``), optional ``thumbnail`` (PNG bytes,
            or a uint8 / [0, 1] float ``[H, W]``, ``[H, W, 3|4]`` array) and optional ``summary``
            (``{column: number | str | bool | None}``; columns are the union over cases).
        title: page title.
        sort_by: initial sort column (a summary key); default the case name.

    Returns:
        UTF-8 HTML.

    Raises:
        ValueError / TypeError: naming the case and key (missing name, duplicate name, absolute
            or URL link, non-PNG bytes, bad thumbnail shape, non-scalar summary value, unknown key).
    """
    rows = _rows(cases)
    columns: List[str] = []
    for row in rows:
        columns += [k for k in row["summary"] if k not in columns]
    if sort_by is not None and sort_by not in columns and sort_by != "name":
        raise ValueError(f"sort_by must be 'name' or a summary key {columns}, got {sort_by!r}")
    meta = {"title": str(title), "columns": columns, "rows": rows, "sort_by": sort_by or "name"}
    return fill_template(template_text("viewer_index_template.html"), str(title), meta)


def write_cohort_index(out_dir: Union[str, os.PathLike], cases: Sequence[Mapping[str, Any]], *,
                       filename: str = "index.html", **kwargs) -> Path:
    """Render :func:`cohort_index_html` (same keyword arguments) and write ``out_dir/filename``
    atomically (nothing is written when a case is invalid). Returns the file's path."""
    from .outputs import write_files_atomically

    content = cohort_index_html(cases, **kwargs)
    return write_files_atomically(out_dir, {filename: content})[filename]
