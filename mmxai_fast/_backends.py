"""Declared backends and the dispatch that explains itself (xformers' pattern).

Every op declares its backends with :class:`Backend`: the devices and dtypes each supports, what
it needs from the environment and an input-dependent ``limits`` function. ``not_supported_reasons``
turns all of that into a list of sentences (empty: the backend can run).

- ``reference``: plain PyTorch, any device but ``meta``; the oracle and the fallback.
- ``cpu``: the C++/OpenMP kernels in ``mmxai_fast._C`` (CPU tensors).
- ``triton``: Triton kernels (CUDA tensors; CPU tensors only under ``TRITON_INTERPRET=1``).
- ``cuda``: CUDA C++ kernels compiled at run time by CuPy/NVRTC (CUDA tensors).

Selection: a backend named by ``backend=`` (or the ``MMXAI_FAST_BACKEND`` environment variable)
that cannot run raises :class:`BackendUnavailableError` with its reasons. The automatic choice takes
the op's backends in declared order and picks the first with no reasons; when a compiled backend
that would have been chosen cannot run, it falls back to the reference and warns once per
(backend, device type, reason). When nothing fits, :class:`NoBackendError` lists every backend's
reasons. ``mmxai-fast backends`` prints the op x backend table (:func:`backend_table`).
"""
from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch

BACKEND_ENV = "MMXAI_FAST_BACKEND"
BACKEND_NAMES = ("reference", "cpu", "triton", "cuda")
AUTO = "auto"
ANY_DEVICE = ("cpu", "cuda", "mps", "xpu", "hpu", "privateuseone")

BACKEND_SUMMARIES = {
    "reference": "plain PyTorch (oracle and fallback)",
    "cpu": "C++/OpenMP kernels in mmxai_fast._C",
    "triton": "Triton kernels (CPU only under TRITON_INTERPRET=1)",
    "cuda": "CUDA C++ compiled at run time by CuPy (NVRTC)",
}


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run the op on these inputs."""


class NoBackendError(BackendUnavailableError):
    """No declared backend (not even the reference) can run the op on these inputs."""


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


def _cuda_reasons(device: torch.device) -> List[str]:
    return [] if torch.cuda.is_available() else ["no CUDA device visible to torch"]


def _triton_reasons(device: torch.device) -> List[str]:
    err = _triton_import_error()
    if err:
        return [err]
    if device.type == "cpu" and not triton_interpret():
        return ["triton runs CPU tensors only under TRITON_INTERPRET=1"]
    return _cuda_reasons(device) if device.type == "cuda" else []


def _cupy_reasons(device: torch.device) -> List[str]:
    err = _cupy_error()
    return [err] if err else []


def _compiled_reasons(device: torch.device) -> List[str]:
    err = _compiled_module_error()
    return [err] if err else []


# What each environment requirement checks; looked up by name at call time so tests can patch.
_REQUIREMENTS: Dict[str, Callable[[torch.device], List[str]]] = {
    "compiled": lambda d: _compiled_reasons(d),
    "triton": lambda d: _triton_reasons(d),
    "cupy": lambda d: _cupy_reasons(d),
    "cuda": lambda d: _cuda_reasons(d),
}


@dataclass(frozen=True)
class Backend:
    """One implementation of an op and what it can run on.

    Args:
        name: one of :data:`BACKEND_NAMES`.
        impl: the implementation, called with the op's validated arguments (or what the op's own
            dispatcher takes, e.g. slic's tuple of step functions).
        devices: device types it takes.
        dtypes: dtypes of the op's main tensor it takes (None: every dtype the op accepts).
        needs: environment requirements (``"compiled"``, ``"triton"``, ``"cupy"``, ``"cuda"``).
        limits: input-dependent ``limits(*inputs) -> list of reasons``.
        summary: what runs, for the backend table.
        auto_devices: device types the automatic choice considers it for (default ``devices``;
            Triton's interpreter runs CPU tensors but is only a correctness tool).
    """

    name: str
    impl: Any
    devices: Tuple[str, ...] = ANY_DEVICE
    dtypes: Optional[Tuple[torch.dtype, ...]] = None
    needs: Tuple[str, ...] = ()
    limits: Optional[Callable[..., List[str]]] = None
    summary: str = ""
    auto_devices: Optional[Tuple[str, ...]] = None

    def chosen_automatically_on(self, device: torch.device) -> bool:
        return device.type in (self.devices if self.auto_devices is None else self.auto_devices)

    def environment_reasons(self, device: torch.device) -> List[str]:
        """Why it cannot run on ``device`` here, whatever the inputs."""
        if device.type not in self.devices:
            return [f"takes {'/'.join(self.devices)} tensors, got {device.type}"]
        reasons: List[str] = []
        for need in self.needs:
            reasons += _REQUIREMENTS[need](device)
        return list(dict.fromkeys(reasons))

    def not_supported_reasons(self, device: torch.device, dtype: Optional[torch.dtype] = None,
                              inputs: Sequence = ()) -> List[str]:
        """Why it cannot run these inputs (empty list: it can)."""
        reasons = self.environment_reasons(device)
        if dtype is not None and self.dtypes is not None and dtype not in self.dtypes:
            reasons.append(f"takes {', '.join(str(d).replace('torch.', '') for d in self.dtypes)}, "
                           f"got {str(dtype).replace('torch.', '')}")
        if not reasons and self.limits is not None:
            reasons += self.limits(*inputs)
        return reasons


_REGISTRY: Dict[str, "OpBackends"] = {}
_warned: set = set()


def _requested(requested: Optional[str]) -> str:
    if not requested:
        requested = os.environ.get(BACKEND_ENV, AUTO) or AUTO
    if requested != AUTO and requested not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {(AUTO,) + BACKEND_NAMES}, got {requested!r}")
    return requested


class OpBackends:
    """The declared backends of one op, in automatic-choice order (the reference last)."""

    def __init__(self, op: str, backends: Sequence[Backend], register: bool = True):
        names = [b.name for b in backends]
        if "reference" not in names or len(set(names)) != len(names):
            raise ValueError(f"{op}: backends must be distinct and include the reference, got {names}")
        self.op = op
        self.backends: Dict[str, Backend] = {b.name: b for b in backends}
        if register:
            _REGISTRY[op] = self

    def reasons(self, name: str, device: torch.device, dtype=None, inputs: Sequence = ()) -> List[str]:
        if name not in self.backends:
            return [f"{self.op} has no {name} implementation"]
        return self.backends[name].not_supported_reasons(device, dtype, inputs)

    def select(self, requested: Optional[str], device: torch.device, dtype: Optional[torch.dtype] = None,
               inputs: Sequence = ()) -> Backend:
        """The backend that runs these inputs.

        Raises:
            ValueError: unknown backend name.
            BackendUnavailableError: an explicitly requested backend cannot run (its reasons).
            NoBackendError: no backend can run (every backend's reasons).
        """
        requested = _requested(requested)
        if requested != AUTO:
            reasons = self.reasons(requested, device, dtype, inputs)
            if reasons:
                raise BackendUnavailableError(
                    f"mmxai_fast.{self.op}: backend {requested!r} cannot run here: " + "; ".join(reasons))
            return self.backends[requested]
        tried: Dict[str, List[str]] = {}
        for name, backend in self.backends.items():
            if not backend.chosen_automatically_on(device):
                continue
            reasons = backend.not_supported_reasons(device, dtype, inputs)
            if not reasons:
                if name == "reference":
                    self._warn_fallback(device, tried)
                return backend
            tried[name] = reasons
        every = {b: self.reasons(b, device, dtype, inputs) or ["not chosen automatically"] for b in self.backends}
        detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in every.items())
        raise NoBackendError(f"mmxai_fast.{self.op}: no backend can run on these inputs ({detail})")

    def _warn_fallback(self, device: torch.device, tried: Dict[str, List[str]]) -> None:
        # Only backends that claim this device count: a cuda kernel is not "missing" on a CPU tensor.
        missing = {b: r for b, r in tried.items() if device.type in self.backends[b].devices}
        fresh = {b: r for b, r in missing.items() if (b, device.type, tuple(r)) not in _warned}
        if not fresh:
            return
        _warned.update((b, device.type, tuple(r)) for b, r in fresh.items())
        detail = "; ".join(f"{b}: {', '.join(r)}" for b, r in fresh.items())
        warnings.warn(f"mmxai_fast.{self.op}: no compiled backend can run on {device.type} tensors here "
                      f"({detail}); using the plain-PyTorch reference implementation (warned once)",
                      RuntimeWarning, stacklevel=4)


def registered_ops() -> Dict[str, OpBackends]:
    """Every op's declared backends (imports the ops)."""
    importlib.import_module("mmxai_fast.ops")
    return dict(_REGISTRY)


def _devices_here() -> List[torch.device]:
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def backend_table() -> List[dict]:
    """One row per (op, backend): ``{"op", "backend", "implemented", "usable_on", "reasons"}``.

    ``usable_on`` lists the device types here the backend can run the op on; ``reasons`` says
    why not where it cannot (a backend that only takes CUDA tensors on a machine without one
    says so).
    """
    rows = []
    for op, declared in sorted(registered_ops().items()):
        for name in BACKEND_NAMES:
            backend = declared.backends.get(name)
            if backend is None:
                rows.append({"op": op, "backend": name, "implemented": False, "usable_on": [],
                             "reasons": [f"{op} has no {name} implementation"]})
                continue
            usable, reasons = [], []
            for device in _devices_here():
                why = backend.environment_reasons(device)
                (reasons.extend(why) if why else usable.append(device.type))
            if not usable and not torch.cuda.is_available() and "cuda" in backend.devices:
                reasons = [r for r in reasons if not r.startswith("takes ")] + ["no CUDA device visible to torch"]
            rows.append({"op": op, "backend": name, "implemented": True, "usable_on": usable,
                         "reasons": [] if usable else list(dict.fromkeys(reasons)),
                         "summary": backend.summary})
    return rows


def format_backend_table(rows: Optional[List[dict]] = None) -> str:
    """The table as text: ops down, backends across, each cell ``yes (devices)`` or ``no``/``-``,
    followed by the reasons per cell."""
    rows = backend_table() if rows is None else rows
    ops = list(dict.fromkeys(r["op"] for r in rows))
    cell = {(r["op"], r["backend"]): r for r in rows}

    def text(r):
        if not r["implemented"]:
            return "-"
        return f"yes ({','.join(r['usable_on'])})" if r["usable_on"] else "no"

    width = max(len(o) for o in ops) + 2
    lines = ["op".ljust(width) + "".join(b.ljust(14) for b in BACKEND_NAMES)]
    lines += [op.ljust(width) + "".join(text(cell[op, b]).ljust(14) for b in BACKEND_NAMES) for op in ops]
    lines += ["", "-: the op has no such backend. Why not, where a declared backend cannot run here:"]
    grouped: Dict[Tuple[str, str], List[str]] = {}
    for r in rows:
        if r["implemented"] and not r["usable_on"]:
            grouped.setdefault((r["backend"], "; ".join(r["reasons"])), []).append(r["op"])
    for (name, why), names in grouped.items():
        lines.append(f"  {name} ({', '.join(names)}): {why}")
    lines += ["", "backends:"] + [f"  {b}: {s}" for b, s in BACKEND_SUMMARIES.items()]
    return "\n".join(lines)


def backend_reasons(name: str, device: torch.device) -> List[str]:
    """Why backend ``name`` cannot run on tensors of ``device`` whatever the op (empty: it can)."""
    if name not in BACKEND_NAMES:
        raise ValueError(f"backend must be one of {(AUTO,) + BACKEND_NAMES}, got {name!r}")
    return _GENERIC[name].environment_reasons(device)


_GENERIC = {
    "reference": Backend("reference", impl=None),
    "cpu": Backend("cpu", impl=None, devices=("cpu",), needs=("compiled",)),
    "triton": Backend("triton", impl=None, devices=("cuda", "cpu"), needs=("triton",), auto_devices=("cuda",)),
    "cuda": Backend("cuda", impl=None, devices=("cuda",), needs=("cuda", "cupy")),
}


def resolve_backend(op: str, requested: Optional[str], device: torch.device, implemented,
                    input_reasons: Optional[Callable[[str], List[str]]] = None) -> str:
    """The pre-declaration API, kept for code that has not declared its backends yet: the name of
    the backend that runs ``op`` among ``implemented`` (the reference is always there)."""
    order = [n for n in ("cpu", "triton", "cuda") if n in set(implemented)] + ["reference"]
    declared = [dataclasses.replace(_GENERIC[n], limits=(lambda n=n: input_reasons(n)) if input_reasons else None)
                for n in order]
    return OpBackends(op, declared, register=False).select(requested, device).name


def reference(impl: Any, **kw) -> Backend:
    """The plain-PyTorch backend of an op (any device but meta)."""
    return Backend("reference", impl, summary=kw.pop("summary", BACKEND_SUMMARIES["reference"]), **kw)


def cpu(impl: Any, **kw) -> Backend:
    """A C++ backend (CPU tensors, needs ``mmxai_fast._C``)."""
    return Backend("cpu", impl, devices=("cpu",), needs=("compiled",),
                   summary=kw.pop("summary", BACKEND_SUMMARIES["cpu"]), **kw)


def triton(impl: Any, **kw) -> Backend:
    """A Triton backend (CUDA tensors, or CPU tensors under TRITON_INTERPRET=1)."""
    return Backend("triton", impl, devices=("cuda", "cpu"), needs=kw.pop("needs", ("triton",)), auto_devices=("cuda",),
                   summary=kw.pop("summary", BACKEND_SUMMARIES["triton"]), **kw)


def cuda(impl: Any, **kw) -> Backend:
    """A CUDA C++ backend compiled at run time by CuPy (CUDA tensors)."""
    return Backend("cuda", impl, devices=("cuda",), needs=kw.pop("needs", ("cuda", "cupy")),
                   summary=kw.pop("summary", BACKEND_SUMMARIES["cuda"]), **kw)


def backends() -> Dict[str, dict]:
    """Which backends are usable on this machine, and why not where they are not.

    Returns:
        ``{name: {"available": bool, "devices": [...], "reasons": [...]}}``; a backend is available
        when it can run on at least one device type present here. Per op: :func:`backend_table`.
    """
    report = {}
    for name in BACKEND_NAMES:
        usable, reasons = [], []
        for dev in _devices_here():
            why = backend_reasons(name, dev)
            (reasons.extend(why) if why else usable.append(dev.type))
        if not usable and not torch.cuda.is_available() and name in ("triton", "cuda"):
            reasons = [r for r in reasons if not r.startswith("takes ")] + ["no CUDA device visible to torch"]
        report[name] = {"available": bool(usable), "devices": usable,
                        "reasons": [] if usable else list(dict.fromkeys(reasons))}
    return report


def run_op(name: str, impl: Callable, *args):
    """Call op ``name``: eagerly its implementation ``impl`` (the body registered as
    ``torch.ops.mmxai_fast.<name>``), under ``torch.compile`` the registered custom op.

    Calling a ``torch.library`` op eagerly imports ``torch._dynamo`` (about 2 s on the first call
    of a process); the eager path never pays for it, and both paths run the same code.
    """
    if torch.compiler.is_compiling():
        return getattr(torch.ops.mmxai_fast, name)(*args)
    if torch.autograd.profiler._is_profiler_enabled:  # name the call in traces, as the custom op would
        with torch.profiler.record_function(f"mmxai_fast::{name}"):
            return impl(*args)
    return impl(*args)
