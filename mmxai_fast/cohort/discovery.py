"""Finding the cases of a cohort: a BraTS-style folder (one sub-folder per case, one NIfTI per
modality named ``<anything>_<modality>.nii.gz``, the tumour segmentation ``*_seg.nii.gz`` as ROI)
or a CSV with one row per case (``case`` column, one column per modality, optional ``roi``).

Discovery never reads images: a case with a missing file is still listed, with the problem in
:attr:`CaseSpec.problem`, so the runner records it as a failure and goes on with the others.
"""
from __future__ import annotations

import csv
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

__all__ = ["CaseSpec", "BRATS_MODALITIES", "discover_cases", "discover_brats_folder", "read_cases_csv"]

BRATS_MODALITIES = ("t1", "t1ce", "t2", "flair")
NIFTI_SUFFIXES = (".nii.gz", ".nii")
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class CaseSpec:
    """One case of a cohort.

    Attributes:
        case_id: unique id, also the name of the case's output folder (``[A-Za-z0-9._-]``).
        modalities: ``(name, path)`` pairs in the cohort's modality order.
        roi: ROI / segmentation file, or None.
        problem: why the case cannot be loaded (a missing file...), or None.
    """

    case_id: str
    modalities: Tuple[Tuple[str, str], ...]
    roi: Optional[str] = None
    problem: Optional[str] = field(default=None, compare=False)

    def modality_paths(self) -> Dict[str, str]:
        return dict(self.modalities)


def _check_id(case_id: str, where: str) -> str:
    if not _SAFE_ID.match(case_id):
        raise ValueError(f"{where}: case id must match [A-Za-z0-9][A-Za-z0-9._-]*, got {case_id!r}")
    return case_id


def _find_modality(folder: Path, name: str) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file()
                  and any(p.name.lower().endswith(f"_{name}{suffix}") for suffix in NIFTI_SUFFIXES))


def discover_brats_folder(root: Union[str, os.PathLike], modalities: Sequence[str] = BRATS_MODALITIES,
                          roi: Optional[str] = "seg") -> List[CaseSpec]:
    """Cases of a BraTS-style folder, sorted by case id (the sub-folder's name).

    Args:
        root: folder holding one sub-folder per case (hidden folders are ignored).
        modalities: modality names; each case needs exactly one ``*_<name>.nii(.gz)`` per name.
        roi: name of the ROI file's suffix (``*_seg.nii.gz``), or None for no ROI. A case without
            it is still valid (no ROI).

    Raises:
        ValueError: ``root`` is not a folder, holds no case folder, or a folder name is not a
            valid case id.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"cases must be a folder or a .csv file, got {str(root)!r}")
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise ValueError(f"cases: folder {str(root)!r} holds no case folder (one per case expected)")
    specs = []
    for folder in folders:
        case_id = _check_id(folder.name, f"cases: folder {str(folder)!r}")
        found, problems = [], []
        for name in modalities:
            matches = _find_modality(folder, name)
            if len(matches) != 1:
                problems.append(f"expected one *_{name}.nii.gz, found {len(matches)}")
            else:
                found.append((name, str(matches[0])))
        roi_files = _find_modality(folder, roi) if roi else []
        if len(roi_files) > 1:
            problems.append(f"expected at most one *_{roi}.nii.gz, found {len(roi_files)}")
        specs.append(CaseSpec(case_id, tuple(found), str(roi_files[0]) if len(roi_files) == 1 else None,
                              "; ".join(problems) or None))
    return specs


def read_cases_csv(path: Union[str, os.PathLike], modalities: Optional[Sequence[str]] = None) -> List[CaseSpec]:
    """Cases of a CSV file: a ``case`` column, one column per modality (file paths, relative to
    the CSV's folder unless absolute) and an optional ``roi`` column.

    Args:
        path: the CSV file.
        modalities: the modality columns, in order; None: every column but ``case`` and ``roi``.

    Raises:
        ValueError: no ``case`` column, a missing modality column, an empty file, a duplicate or
            invalid case id.
    """
    path = Path(path)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        columns = list(reader.fieldnames or [])
        rows = list(reader)
    if "case" not in columns:
        raise ValueError(f"cases: CSV {str(path)!r} must have a 'case' column, got columns {columns}")
    names = list(modalities) if modalities else [c for c in columns if c not in ("case", "roi")]
    missing = [n for n in names if n not in columns]
    if missing or not names:
        raise ValueError(f"cases: CSV {str(path)!r} must have a column per modality {names}, missing {missing}")
    if not rows:
        raise ValueError(f"cases: CSV {str(path)!r} lists no case")
    base, specs, seen = path.parent, [], set()

    def resolve(value: str) -> str:
        return str(Path(value) if Path(value).is_absolute() else base / value)

    for number, row in enumerate(rows, start=2):
        case_id = _check_id((row.get("case") or "").strip(), f"cases: CSV {str(path)!r} line {number}")
        if case_id in seen:
            raise ValueError(f"cases: CSV {str(path)!r} line {number}: case id {case_id!r} given twice")
        seen.add(case_id)
        files = tuple((n, resolve((row.get(n) or "").strip())) for n in names)
        problems = [f"{n}: file {p!r} does not exist" for n, p in files if not Path(p).is_file()]
        roi_text = (row.get("roi") or "").strip()
        roi = resolve(roi_text) if roi_text else None
        if roi and not Path(roi).is_file():
            problems.append(f"roi: file {roi!r} does not exist")
        specs.append(CaseSpec(case_id, files, roi, "; ".join(problems) or None))
    return specs


def discover_cases(source: Union[str, os.PathLike], modalities: Optional[Sequence[str]] = None,
                   roi: Optional[str] = "seg") -> List[CaseSpec]:
    """A ``.csv`` file (:func:`read_cases_csv`) or a BraTS-style folder (:func:`discover_brats_folder`)."""
    if str(source).lower().endswith(".csv"):
        if not Path(source).is_file():
            raise ValueError(f"cases: CSV file {str(source)!r} does not exist")
        return read_cases_csv(source, modalities)
    return discover_brats_folder(source, modalities or BRATS_MODALITIES, roi)
