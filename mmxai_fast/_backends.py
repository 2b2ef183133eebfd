"""Backend availability and selection.

Every op has a plain-PyTorch ``reference`` implementation (always available, also the fallback)
and compiled backends:

- ``cpu``: the C++/OpenMP kernels in ``mmxai_fast._C`` (CPU tensors).
- ``triton``: Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``).
- ``cuda``: CUDA C++ kernels compiled at run time with CuPy/NVRTC (CUDA tensors).

Selection (xformers style): a backend that cannot run states its reasons. An explicit request
(``backend=`` or the ``MMXAI_FAST_BACKEND`` environment variable) that cannot run raises
:class:`BackendUnavailableError` with those reasons; the automatic choice falls back to the
reference and warns once per (op, device type).
"""
from __future__ import annotations

import functools
import importlib
import os
import warnings
from typing import Callable, Dict, Iterable, List, Optional

import torch

BACKEND_ENV = "MMXAI_FAST_BACKEND"
BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
AUTO = "auto"
# Order in which the automatic choice tries backends, by tensor device type.
_AUTO_ORDER = {"cpu": ("cpu",), "cuda": ("triton", "cuda")}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op on these inputs."""


@functools.lru_cache(maxsize=None)
def _compiled_module_error() -> Optional[str]:
    try:
        importlib.import_module("mmxai_fast._C")
    except ImportError as exc:  # missing build, wrong platform...
        return f"compiled module mmxai_fast._C is not importable ({exc}); reinstall with `pip install .`"
    return None


def compiled_module():
    """The C++ extension module; raises BackendUnavailableError if it is missing."""
    err = _compiled_module_error()
    if err:
        raise BackendUnavailableError(err)
    return importlib.import_module("mmxai_fast._C")


@functools.lru_cache(maxsize=None)
def _triton_import_error() -> Optional[str]:
    try:
        importlib.import_module("triton")
    except Exception as exc:  # ImportError, or a broken install raising anything
        return f"triton is not importable ({exc}); `pip install triton`"
    return None


def triton_interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


@functools.lru_cache(maxsize=None)
def _cupy_error() -> Optional[str]:
    # CuPy imports fine on a machine without a GPU and fails on first use, so probe a real call.
    try:
        cupy = importlib.import_module("cupy")
        cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:
        return f"CuPy cannot reach a CUDA device ({type(exc).__name__}: {exc})"
    return None


def backend_reasons(name: str, device: torch.device) -> List[str]:
    """Why backend ``name`` cannot run on tensors of ``device`` (empty list: it can)."""
    if name == "reference":
        return []
    if name == "cpu":
        reasons = []
        if device.type != "cpu":
            reasons.append(f"the cpu backend takes CPU tensors, got {device.type}")
        err = _compiled_module_error()
        if err:
            reasons.append(err)
        return reasons
    if name == "triton":
        err = _triton_import_error()
        if err:
            return [err]
        if device.type == "cuda":
            return [] if torch.cuda.is_available() else ["CUDA is not available to torch"]
        if device.type == "cpu":
            if triton_interpret():
                return []
            return ["triton runs CPU tensors only under TRITON_INTERPRET=1"]
        return [f"triton does not support device type {device.type}"]
    if name == "cuda":
        if device.type != "cuda":
            return [f"the cuda backend takes CUDA tensors, got {device.type}"]
        err = _cupy_error()
        return [err] if err else []
    raise ValueError(f"backend must be one of {('auto',) + BACKEND_NAMES}, got {name!r}")


_warned: set = set()


def _warn_fallback(op: str, device: torch.device, reasons: Dict[str, List[str]]) -> None:
    key = (op, device.type)
    if key in _warned:
        return
    _warned.add(key)
    detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in reasons.items())
    warnings.warn(
        f"mmxai_fast.{op}: no compiled backend can run on {device.type} tensors here ({detail}); "
        "using the plain-PyTorch reference implementation",
        RuntimeWarning,
        stacklevel=4,
    )


def resolve_backend(
    op: str,
    requested: Optional[str],
    device: torch.device,
    implemented: Iterable[str],
    input_reasons: Optional[Callable[[str], List[str]]] = None,
) -> str:
    """Pick the backend that runs ``op``.

    Args:
        op: op name, for messages.
        requested: ``None``/``""`` (consult ``MMXAI_FAST_BACKEND``, else automatic), ``"auto"``,
            or a backend name.
        device: the device of the op's tensors.
        implemented: backends that have an implementation of this op.
        input_reasons: optional ``backend -> reasons`` for input-specific limits (dtypes, sizes).

    Raises:
        ValueError: unknown backend name.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    if not requested:
        requested = os.environ.get(BACKEND_ENV, AUTO) or AUTO
    if requested != AUTO and requested not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {(AUTO,) + BACKEND_NAMES}, got {requested!r}")
    implemented = set(implemented) | {"reference"}

    def reasons_for(name: str) -> List[str]:
        if name not in implemented:
            return [f"{op} has no {name} implementation"]
        found = backend_reasons(name, device)
        if not found and input_reasons is not None:
            found = list(input_reasons(name))
        return found

    if requested != AUTO:
        reasons = reasons_for(requested)
        if reasons:
            raise BackendUnavailableError(
                f"mmxai_fast.{op}: backend {requested!r} cannot run here: " + "; ".join(reasons)
            )
        return requested
    tried: Dict[str, List[str]] = {}
    for name in _AUTO_ORDER.get(device.type, ()):
        reasons = reasons_for(name)
        if not reasons:
            return name
        tried[name] = reasons
    if tried or device.type not in _AUTO_ORDER:
        _warn_fallback(op, device, tried or {"any": [f"no compiled backend for {device.type}"]})
    return "reference"


def backends() -> Dict[str, dict]:
    """Which backends are usable on this machine, and why not where they are not.

    Returns:
        ``{name: {"available": bool, "devices": [...], "reasons": [...]}}``; a backend is available
        when it can run on at least one device type present here.
    """
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    report = {}
    for name in BACKEND_NAMES:
        usable, reasons = [], []
        for dev in devices:
            why = backend_reasons(name, dev)
            if why:
                reasons.extend(why)
            else:
                usable.append(dev.type)
        if name == "cuda" and not torch.cuda.is_available():
            reasons = ["no CUDA device visible to torch"]
        if name == "triton" and not usable and not torch.cuda.is_available():
            reasons = [r for r in reasons if "TRITON_INTERPRET" in r or "not importable" in r]
            reasons.append("no CUDA device visible to torch")
        report[name] = {"available": bool(usable), "devices": usable,
                        "reasons": list(dict.fromkeys(reasons)) if not usable else []}
    return report
