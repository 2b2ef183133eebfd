"""``index.html`` of a cohort output folder: one row per finished case, read back from the case's
own files (``summary.json``, ``importance.json``, ``heatmaps.png``), linking to its ``viewer.html``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

__all__ = ["write_index", "index_rows"]

THUMBNAIL_PX = 160
_SUMMARY_KEYS = ("model_evaluations", "model_inputs", "wall_s", "model_s")


def _thumbnail(png: Path) -> np.ndarray:
    from matplotlib.image import imread

    image = imread(png)[..., :3]
    step = max(1, int(np.ceil(max(image.shape[:2]) / THUMBNAIL_PX)))
    return np.clip(image[::step, ::step], 0, 1)


def _row(out: Path, case_id: str) -> Dict[str, Any]:
    folder = out / case_id
    summary = json.loads((folder / "summary.json").read_text())
    values: Dict[str, Any] = {"method": summary.get("method")}
    values.update({key: summary[key] for key in _SUMMARY_KEYS if isinstance(summary.get(key), (int, float))})
    importance = summary.get("modality_importance") or {}
    values.update({f"{name} share": share for name, share in importance.items() if isinstance(share, (int, float))})
    stderr = summary.get("stderr") or {}
    if isinstance(stderr, dict) and isinstance(stderr.get("max"), (int, float)):
        values["max stderr"] = stderr["max"]
    heatmaps = folder / "heatmaps.png"
    return {"name": case_id, "viewer_relpath": f"{case_id}/viewer.html",
            "thumbnail": _thumbnail(heatmaps) if heatmaps.is_file() else None, "summary": values}


def index_rows(out: Path, case_ids: Sequence[str]) -> List[Dict[str, Any]]:
    """The index rows of the finished ``case_ids`` (cases without ``summary.json`` are left out)."""
    return [_row(out, case_id) for case_id in case_ids if (out / case_id / "summary.json").is_file()]


def write_index(out: Path, case_ids: Sequence[str], title: str = "mmxai-fast cohort",
                rows: Optional[Sequence[Dict[str, Any]]] = None) -> Path:
    """Write ``out/index.html`` (atomically) for ``case_ids``, sortable by name and summary values.

    ``rows``: those of :func:`index_rows`, computed beforehand (e.g. by every rank for its share
    of the cases); None: read here.
    """
    from ..pipeline.viewer_cohort import write_cohort_index

    if rows is None:
        rows = index_rows(out, case_ids)
    order = {case_id: i for i, case_id in enumerate(case_ids)}
    rows = [r for r in sorted(rows, key=lambda r: order.get(r["name"], len(order))) if r["name"] in order]
    return write_cohort_index(out, rows, title=title)
