"""Writing an explanation to disk: heatmaps as NIfTI (the input's affine), importance and run
summary as JSON, figures as PNG.

An explanation's files form one *output set*, published all-or-nothing, even under SIGKILL:

1. every file is rendered in memory (:func:`render_explanation`) and checked;
2. the files are written and fsynced into a hidden staging folder next to the output folder
   (``.<name>.<pid>.<random>.mmxai-staging`` in the same parent, so on the same file system);
3. the staging folder is published with one rename. An existing output folder holding an older
   output set is swapped with the new one atomically (Linux ``renameat2(RENAME_EXCHANGE)``), then
   the old set, now under the staging name, is deleted. Where the exchange is not supported the
   old folder is renamed away (``.<name>.<pid>.<random>.mmxai-old``), the new one renamed in and the
   old deleted; a reader then sees, for an instant, no folder, never a mix.

A reader therefore finds the folder holding all old files or all new files. Leftovers of a killed
run (staging or old folders whose process is gone) are removed by the next run for the same
folder, which first renames a lone ``.mmxai-old`` folder back when the output folder is missing.
An existing output folder is replaced only when it holds nothing but plain files named like
outputs (``*_heatmap.nii.gz``, ``importance.json``...); anything else (a folder named like an
output, a foreign file) is refused with :class:`OutputError` before any file is written.
"""
from __future__ import annotations

import ctypes
import errno
import gzip
import io
import json
import math
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Tuple, Union

import numpy as np

from .case import Case

__all__ = ["write_explanation", "render_explanation", "publish_output_set", "check_output_dir",
           "write_files_atomically", "heatmap_filename", "OutputError", "OUTPUT_NAMES"]

_SAFE = re.compile(r"[^A-Za-z0-9._-]+")
HEATMAP_SUFFIX = "_heatmap.nii.gz"
#: Fixed file names of an output set (besides ``<modality>_heatmap.nii.gz``).
# evaluation.json and curves.png: mmxai-fast evaluate / explain --metrics (a re-explained folder drops them).
OUTPUT_NAMES = ("importance.json", "summary.json", "heatmaps.png", "importance.png", "viewer.html",
                "evaluation.json", "curves.png")
_LEGACY_TMP = re.compile(r"^\..+\.[A-Za-z0-9_]+\.tmp$")  # per-file temporaries of older versions
_MAX_NAME_BYTES = 255
PathLike = Union[str, os.PathLike]


class OutputError(ValueError):
    """The output folder cannot receive an output set; nothing was written."""


def _checkpoint(stage: str) -> None:
    """Called at every file-system boundary of :func:`publish_output_set` (tests kill here)."""


def heatmap_filename(modality: str) -> str:
    """``<modality>_heatmap.nii.gz`` with characters outside ``[A-Za-z0-9._-]`` replaced by ``_``."""
    return f"{_SAFE.sub('_', modality)}{HEATMAP_SUFFIX}"


def _check_file_name(name: str) -> None:
    if (not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\0" in name
            or len(os.fsencode(name)) > _MAX_NAME_BYTES):
        raise OutputError(f"file names must be plain names of 1 to {_MAX_NAME_BYTES} bytes, got {name!r}")


def _is_output_name(name: str, names: Iterable[str]) -> bool:
    return name in names or name in OUTPUT_NAMES or name.endswith(HEATMAP_SUFFIX) or bool(_LEGACY_TMP.match(name))


def _out_path(out_dir: PathLike) -> Path:
    if not isinstance(out_dir, (str, os.PathLike)) or not str(out_dir):
        raise OutputError(f"out_dir must be a folder path, got {out_dir!r}")
    out = Path(os.path.realpath(out_dir))
    if out.parent == out:
        raise OutputError(f"out_dir must be a folder below the file system root, got {str(out_dir)!r}")
    return out


def _probe_writable(folder: Path, out_dir) -> None:
    ancestor = folder
    while not ancestor.exists():
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise OutputError(f"out_dir: {str(ancestor)!r} is not a folder, so {str(out_dir)!r} cannot be created")
    try:
        os.rmdir(tempfile.mkdtemp(dir=ancestor, prefix=".mmxai-probe-"))
    except OSError as exc:
        raise OutputError(f"out_dir: cannot write into {str(ancestor)!r} ({exc.strerror}); the output set is "
                          f"staged and renamed there") from None


def check_output_dir(out_dir: PathLike, names: Iterable[str] = ()) -> Path:
    """Check that ``out_dir`` can receive an output set (see the module doc), writing nothing.

    ``out_dir`` may be missing (it is created, parents too) or a folder holding only plain
    files named like outputs; its parent must be writable.

    Returns:
        the absolute output path (symlinks resolved).

    Raises:
        OutputError: ``out_dir`` is a file, holds a folder or a file that is not an output
            (named), or its parent cannot be written.
    """
    out = _out_path(out_dir)
    names = set(names)
    if out.exists() or out.is_symlink():
        if not out.is_dir():
            raise OutputError(f"out_dir: {str(out_dir)!r} exists and is not a folder")
        for entry in os.scandir(out):
            if entry.is_dir(follow_symlinks=False):
                raise OutputError(f"out_dir: {str(Path(out_dir) / entry.name)!r} is a folder; an output folder may "
                                  f"only hold output files (it is replaced as a whole), so remove it or choose "
                                  f"another folder")
            if not entry.is_file(follow_symlinks=False) or not _is_output_name(entry.name, names):
                raise OutputError(f"out_dir: {str(out_dir)!r} holds {entry.name!r}, which is not an output file; the "
                                  f"output folder is replaced as a whole, so choose a new or empty folder")
    _probe_writable(out.parent, out_dir)
    return out


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _leftovers(parent: Path, name: str, kind: str) -> List[Path]:
    """Staging/old folders of ``name`` in ``parent`` whose process is gone."""
    pattern = re.compile(rf"^\.{re.escape(name)}\.(\d+)\.[A-Za-z0-9_]+\.mmxai-{kind}$")
    found = []
    for entry in os.scandir(parent):
        match = pattern.match(entry.name)
        if match and int(match.group(1)) != os.getpid() and not _alive(int(match.group(1))):
            found.append(parent / entry.name)
    return found


def _clean_leftovers(out: Path) -> None:
    old = _leftovers(out.parent, out.name, "old")
    if not out.exists() and len(old) == 1:  # killed between the two renames of the fallback: roll back
        os.rename(old.pop(), out)
    for path in old + _leftovers(out.parent, out.name, "staging"):
        shutil.rmtree(path, ignore_errors=True)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_RENAME_EXCHANGE, _AT_FDCWD = 2, -100


def _exchange(a: Path, b: Path) -> bool:
    """Atomically swap two paths (Linux renameat2); False where not supported."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def _write_staging(staging: Path, files: Dict[str, bytes]) -> None:
    for name, content in files.items():
        fd = os.open(staging / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        _checkpoint(f"wrote {name}")
    _fsync_dir(staging)


def _swap_in(staging: Path, out: Path) -> Path:
    """Put ``staging`` at ``out`` (an existing folder); returns where the old set now is."""
    if _exchange(staging, out):
        return staging
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".mmxai-old"))
    os.rename(out, old)  # replaces the empty folder just made
    _checkpoint("moved old away")
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    return old


def publish_output_set(out_dir: PathLike, files: Dict[str, bytes]) -> Dict[str, Path]:
    """Make ``out_dir`` hold exactly ``files`` (``{filename: content}``), all-or-nothing.

    See the module doc for the protocol and what an existing ``out_dir`` may hold.

    Returns:
        ``{filename: final path}``.

    Raises:
        OutputError: a bad file name, or ``out_dir`` cannot receive an output set; nothing written.
    """
    for name in files:
        _check_file_name(name)
    out = check_output_dir(out_dir, files)
    out.parent.mkdir(parents=True, exist_ok=True)
    _clean_leftovers(out)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.{os.getpid()}.", suffix=".mmxai-staging"))
    try:
        _checkpoint("staged")
        os.chmod(staging, 0o755)
        _write_staging(staging, files)
        if out.is_dir():
            old = _swap_in(staging, out)
            _checkpoint("published")
            _fsync_dir(out.parent)
            shutil.rmtree(old)
        else:
            os.rename(staging, out)
            _checkpoint("published")
            _fsync_dir(out.parent)
        _checkpoint("done")
    finally:
        if staging.exists():  # not published, or the old set after an exchange
            shutil.rmtree(staging, ignore_errors=True)
    return {name: Path(out_dir) / name for name in files}


def write_files_atomically(out_dir: PathLike, files: Dict[str, bytes]) -> Dict[str, Path]:
    """Add ``{filename: content}`` to the folder ``out_dir``, each file atomically, keeping its
    other entries (the demo's summary beside its case folders). For a whole output set, use
    :func:`publish_output_set`.

    Every file goes to a temporary name in ``out_dir`` first; only when all are written are
    they renamed into place (``os.replace``). On error every temporary file is removed.

    Raises:
        OutputError: a bad file name, or one that exists as a folder (checked before writing).
    """
    out = Path(out_dir)
    for name in files:
        _check_file_name(name)
        if (out / name).is_dir():
            raise OutputError(f"out_dir: {str(out / name)!r} is a folder, not a file; remove it or choose another folder")
    out.mkdir(parents=True, exist_ok=True)
    temps: List[Tuple[str, Path]] = []
    try:
        for name, content in files.items():
            handle, tmp_name = tempfile.mkstemp(dir=out, prefix=f".{name}.", suffix=".tmp")
            temps.append((name, Path(tmp_name)))
            with os.fdopen(handle, "wb") as f:
                f.write(content)
                f.flush()
                os.fsync(f.fileno())
        for name, tmp in temps:
            os.replace(tmp, out / name)
        return {name: out / name for name, _ in temps}
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
    return (json.dumps(payload, indent=2, allow_nan=False) + "\n").encode()


def check_output_names(modalities) -> List[str]:
    """The heatmap file names of ``modalities``.

    Raises:
        OutputError: two names that sanitise to the same file, or a name too long for a file.
    """
    names = [heatmap_filename(m) for m in modalities]
    for modality, name in zip(modalities, names):
        if len(os.fsencode(name)) > _MAX_NAME_BYTES:
            raise OutputError(f"modality names must give file names of at most {_MAX_NAME_BYTES} bytes, got "
                              f"{modality[:40]!r}... ({len(os.fsencode(name))} bytes)")
    if len(set(names)) != len(names):
        raise OutputError(f"modality names {tuple(modalities)} give clashing file names {names}")
    return names


def render_figures(case: Case, explanation, names: Iterable[str] = ("heatmaps.png", "importance.png"), *,
                   slice: Optional[int] = None, smooth_sigma: Optional[float] = None) -> Dict[str, bytes]:
    """The PNG figures ``names`` of :func:`render_explanation` (e.g. rendered by another process)."""
    from .figures import _display_slice, plot_explanation, plot_modality_importance, scale_signed

    plots = {"heatmaps.png": lambda: plot_explanation(case, explanation, slice=_display_slice(
        case, scale_signed(explanation.attributions), slice), smooth_sigma=smooth_sigma),
             "importance.png": lambda: plot_modality_importance(explanation)}
    return {name: _png_bytes(plots[name]()) for name in names}


def render_explanation(case: Case, explanation, *, slice: Optional[int] = None,
                       smooth_sigma: Optional[float] = None, figures: Optional[Dict[str, bytes]] = None) -> Dict[str, bytes]:
    """Every output file's content, in memory (see :func:`write_explanation`); ``figures``: PNG
    figures already rendered (:func:`render_figures`), the others are rendered here."""
    from .figures import _display_slice, scale_signed
    from .viewer import render_viewer

    if smooth_sigma is not None and (isinstance(smooth_sigma, bool) or not isinstance(smooth_sigma, (int, float))
                                     or not math.isfinite(smooth_sigma) or smooth_sigma < 0):
        raise ValueError(f"smooth_sigma must be None or a finite number >= 0, got {smooth_sigma!r}")
    if slice is not None and (isinstance(slice, bool) or not isinstance(slice, (int, np.integer))):
        raise ValueError(f"slice must be None or an int, got {slice!r}")
    attributions = explanation.attributions
    if tuple(attributions.shape) != tuple(case.image.shape):
        raise ValueError(f"explanation.attributions must have the case's shape {tuple(case.image.shape)}, "
                         f"got {tuple(attributions.shape)}")
    if not bool(attributions.isfinite().all()):
        raise ValueError("explanation.attributions must be finite, got NaN or infinite values (a model output "
                         "or gradient that overflowed?)")
    names = check_output_names(case.modalities)
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
    done = figures or {}
    files.update({name: done[name] if name in done else render_figures(case, explanation, [name], slice=slice,
                                                                       smooth_sigma=smooth_sigma)[name]
                  for name in ("heatmaps.png", "importance.png")})
    files["viewer.html"] = render_viewer(case, [explanation], smooth_sigma=smooth_sigma)
    return files


def write_explanation(case: Case, explanation, out_dir: PathLike, *, slice: Optional[int] = None,
                      smooth_sigma: Optional[float] = None) -> Dict[str, Path]:
    """Write one case's explanation into ``out_dir`` as one output set (see the module doc).

    Files: ``<modality>_heatmap.nii.gz`` (raw float32 attributions, the case's affine),
    ``importance.json`` (``{modality: share}``), ``summary.json`` (method, target, run stats,
    slice, settings), ``heatmaps.png`` (:func:`~mmxai_fast.pipeline.figures.plot_explanation`)
    ``importance.png`` and ``viewer.html`` (:func:`~mmxai_fast.pipeline.viewer.render_viewer`).
    Everything is rendered and validated before the first byte is written; the folder then holds
    all the new files or (on error or kill) all the old ones (:func:`publish_output_set`). An
    existing ``out_dir`` with an older output set is replaced as a whole.

    Args:
        case: the explained case.
        explanation: its :class:`~mmxai_fast.pipeline.Explanation`.
        out_dir: output folder (missing, or holding only output files).
        slice: axial slice of the figure; None: largest ROI area, else largest ``|attribution|``.
        smooth_sigma: Gaussian smoothing of the figure's heatmaps (voxels, finite >= 0); the
            NIfTI maps are raw.

    Returns:
        ``{filename: path}``.

    Raises:
        ValueError: attributions not of the case's shape, slice out of range, bad smooth_sigma.
        OutputError: clashing or too long modality file names, ``out_dir`` a file or holding
            anything but output files, parent not writable.
    """
    check_output_dir(out_dir, ())
    return publish_output_set(out_dir, render_explanation(case, explanation, slice=slice,
                                                          smooth_sigma=smooth_sigma))
