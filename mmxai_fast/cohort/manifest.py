"""The cohort manifest: ``<out>/manifest.json`` records the run's settings, a hash of the model
weights and the finished cases, so a rerun skips what is done and refuses to mix results.

The file carries a format tag and a SHA-256 of its own content: a file that is not valid JSON,
lacks the tag (a foreign file) or whose checksum does not match (edited, truncated) is refused.
It is always replaced atomically (temporary file + ``os.replace``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Iterable, Mapping, Union

import torch

__all__ = ["ManifestError", "MANIFEST_NAME", "MANIFEST_FORMAT", "model_weights_hash", "settings_hash",
           "read_manifest", "write_manifest", "open_manifest", "atomic_write_bytes"]

MANIFEST_NAME = "manifest.json"
MANIFEST_FORMAT = "mmxai_fast.cohort.manifest/1"


class ManifestError(ValueError):
    """The manifest is corrupted, foreign, or was written with other settings or weights."""


def _canonical(payload: Any) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def settings_hash(settings: Mapping[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``settings``."""
    return hashlib.sha256(_canonical(dict(settings))).hexdigest()


def model_weights_hash(model: torch.nn.Module) -> str:
    """SHA-256 over the names, dtypes, shapes and bytes of every tensor of ``model.state_dict()``
    (TorchScript models too); the same weights give the same hash whatever file they came from."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        tensor = tensor.detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def atomic_write_bytes(path: Union[str, os.PathLike], content: bytes) -> None:
    """Write ``content`` to a temporary file next to ``path``, fsync, then ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as f:
            f.write(content)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_manifest(out_dir: Union[str, os.PathLike], settings: Mapping[str, Any], model_hash: str,
                   done: Iterable[str]) -> Dict[str, Any]:
    """Write the manifest of ``out_dir`` (atomically) and return its content."""
    body = {"format": MANIFEST_FORMAT, "settings": dict(settings), "settings_hash": settings_hash(settings),
            "model_hash": model_hash, "done": sorted(set(done))}
    payload = {**body, "checksum": hashlib.sha256(_canonical(body)).hexdigest()}
    atomic_write_bytes(Path(out_dir) / MANIFEST_NAME, (json.dumps(payload, indent=2) + "\n").encode())
    return payload


def read_manifest(out_dir: Union[str, os.PathLike]) -> Dict[str, Any]:
    """The checked manifest of ``out_dir``.

    Raises:
        FileNotFoundError: no manifest.
        ManifestError: not JSON, not a cohort manifest, or its checksum does not match.
    """
    path = Path(out_dir) / MANIFEST_NAME
    text = path.read_bytes()
    try:
        payload = json.loads(text)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ManifestError(f"manifest {str(path)!r} is corrupted (not valid JSON: {exc}); remove it and the "
                            f"results next to it, or choose another --out") from None
    if not isinstance(payload, dict) or payload.get("format") != MANIFEST_FORMAT:
        found = payload.get("format") if isinstance(payload, dict) else type(payload).__name__
        raise ManifestError(f"manifest {str(path)!r} is not an mmxai-fast cohort manifest (format must be "
                            f"{MANIFEST_FORMAT!r}, got {found!r}); choose another --out")
    body = {k: v for k, v in payload.items() if k != "checksum"}
    expected = hashlib.sha256(_canonical(body)).hexdigest()
    if payload.get("checksum") != expected or set(body) != {"format", "settings", "settings_hash",
                                                           "model_hash", "done"}:
        raise ManifestError(f"manifest {str(path)!r} is corrupted (checksum mismatch: edited or truncated); "
                            f"remove it and the results next to it, or choose another --out")
    return payload


def _differences(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    keys = sorted(set(old) | set(new))
    diffs = [f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys if old.get(k) != new.get(k)]
    return "; ".join(diffs[:5])


def open_manifest(out_dir: Union[str, os.PathLike], settings: Mapping[str, Any], model_hash: str) -> Dict[str, Any]:
    """Check (or create) the manifest of ``out_dir`` for a run with ``settings`` and ``model_hash``.

    A new or empty ``out_dir`` gets a fresh manifest. An existing one must have been written with
    the same settings and the same model weights.

    Raises:
        ManifestError: corrupted or foreign manifest, other settings or other weights, or a
            non-empty ``out_dir`` without a manifest.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ManifestError(f"out must be a folder, got the file {str(out)!r}")
    if not (out / MANIFEST_NAME).exists():
        if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()):
            raise ManifestError(f"out folder {str(out)!r} is not empty and has no {MANIFEST_NAME}: it was not "
                                f"written by mmxai-fast cohort; choose another --out")
        return write_manifest(out, settings, model_hash, [])
    payload = read_manifest(out)
    if payload["settings_hash"] != settings_hash(settings):
        raise ManifestError(f"out folder {str(out)!r} holds results of other settings "
                            f"({_differences(payload['settings'], settings)}); rerun with the same settings "
                            f"or choose another --out")
    if payload["model_hash"] != model_hash:
        raise ManifestError(f"out folder {str(out)!r} holds results of other model weights (sha256 "
                            f"{payload['model_hash'][:12]}..., this model {model_hash[:12]}...); choose another --out")
    return payload
