"""Hounsfield-unit windowing: ``hu_window`` (RadiomicGAN, Selim et al.; background.md section 3).

A CT window ``(level, width)`` maps HU values to [0, 1]::

    out = clip((v - (level - width / 2)) / width, 0, 1)

Clinicians read one CT at several windows; stacking them gives a multi-channel ("multi-modal")
input. All windows are computed in one pass over the volume.

Naming chain: ``hu_window_reference`` (oracle and fallback), ``_hu_window_cpu`` (C++),
``_hu_window_triton`` (Triton launcher in ``kernels/triton/hu_window.py``), the registered
``torch.ops.mmxai_fast.hu_window`` and the public ``hu_window``.
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch

from .. import _backends as B
from .._backends import compiled_module, run_op
from .._cuda import CUDA_TYPE_NAMES
from .._kernels import cpu_supports, dtype_code, triton_module
from .._validation import require_tensor

MAX_LEVEL = 1e30
WIDTH_RANGE = (1e-30, 1e30)


@dataclass(frozen=True)
class HUWindow:
    """A CT display window in Hounsfield units: centre ``level`` and full ``width``."""

    level: float
    width: float

    def __post_init__(self):
        # The kernels compute in float32: a level or width beyond these overflows (width 1e308)
        # or has no float32 inverse (width 1e-320).
        if not (math.isfinite(self.level) and math.isfinite(self.width)):
            raise ValueError(f"HUWindow level and width must be finite, got ({self.level}, {self.width})")
        if not abs(self.level) <= MAX_LEVEL:
            raise ValueError(f"HUWindow level must be in [-{MAX_LEVEL:g}, {MAX_LEVEL:g}], got {self.level}")
        if not WIDTH_RANGE[0] <= self.width <= WIDTH_RANGE[1]:
            raise ValueError(f"HUWindow width must be in [{WIDTH_RANGE[0]:g}, {WIDTH_RANGE[1]:g}] (> 0), "
                             f"got {self.width}")

    @property
    def lower(self) -> float:
        return self.level - self.width / 2

    @property
    def upper(self) -> float:
        return self.level + self.width / 2

    @classmethod
    def from_range(cls, lower: float, upper: float) -> "HUWindow":
        """The window that maps ``[lower, upper]`` HU onto [0, 1]."""
        return cls(level=(lower + upper) / 2, width=upper - lower)


# Common CT windows as (level, width) in HU.
HU_WINDOW_PRESETS: Dict[str, HUWindow] = {
    # Radiopaedia, "Windowing (CT)", head: brain W:80 L:40.
    "brain": HUWindow(40, 80),
    # Radiopaedia, head: subdural W:130-300 L:50-100 (middle of both ranges).
    "subdural": HUWindow(75, 215),
    # Radiopaedia, head: stroke W:40 L:40.
    "stroke": HUWindow(40, 40),
    # Radiopaedia, chest/abdomen: soft tissues W:350-400 L:20-60; 50/350 as in the RadiomicGAN
    # and MONAI tutorials' abdomen setting.
    "soft_tissue": HUWindow(50, 350),
    # Radiopaedia, chest: mediastinum W:350 L:50.
    "mediastinum": HUWindow(50, 350),
    # Radiopaedia, chest: lungs W:1500 L:-600.
    "lung": HUWindow(-600, 1500),
    # Radiopaedia, abdomen: liver W:150 L:30.
    "liver": HUWindow(30, 150),
    # Bone W:2000 L:500 (Hoeffner et al., Radiology 2012 "CT windows"; Radiopaedia gives
    # W:1800 L:400 for bone).
    "bone": HUWindow(500, 2000),
    # Radiopaedia, head: temporal bones W:2800 L:600.
    "temporal_bone": HUWindow(600, 2800),
    # The whole 12-bit CT range -1024..3071 HU (background.md section 3).
    "full": HUWindow.from_range(-1024, 3071),
}

WindowSpec = Union[str, HUWindow, Tuple[float, float]]

_INPUT_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
                 torch.float16, torch.bfloat16, torch.float32, torch.float64)


def parse_windows(windows) -> List[HUWindow]:
    """Accepts a preset name, an :class:`HUWindow`, a ``(level, width)`` pair, a sequence of
    these, a mapping name -> window, or a ``[W, 2]`` tensor of (level, width) rows."""
    if isinstance(windows, torch.Tensor):
        if windows.dim() != 2 or windows.shape[1] != 2:
            raise ValueError(f"windows tensor must have shape (W, 2) of (level, width), got {tuple(windows.shape)}")
        windows = [tuple(row) for row in windows.detach().double().cpu().tolist()]
    elif isinstance(windows, (str, HUWindow)) or (
        isinstance(windows, tuple) and len(windows) == 2 and all(isinstance(v, (int, float)) for v in windows)
    ):
        windows = [windows]
    elif isinstance(windows, Mapping):
        windows = list(windows.values())
    parsed = []
    for item in windows:
        if isinstance(item, HUWindow):
            parsed.append(item)
        elif isinstance(item, str):
            if item not in HU_WINDOW_PRESETS:
                raise ValueError(f"windows: unknown preset {item!r}; presets are {sorted(HU_WINDOW_PRESETS)}")
            parsed.append(HU_WINDOW_PRESETS[item])
        elif isinstance(item, Sequence) and len(item) == 2:
            parsed.append(HUWindow(float(item[0]), float(item[1])))
        else:
            raise ValueError(f"windows entries must be preset names, HUWindow or (level, width), got {item!r}")
    return parsed


def hu_window_reference(volume: torch.Tensor, levels: Sequence[float], widths: Sequence[float],
                        out_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Plain-PyTorch oracle. Computes in float64 when ``out_dtype`` is float64, else float32."""
    compute = torch.float64 if out_dtype == torch.float64 else torch.float32
    v = volume.to(compute).unsqueeze(0)
    level = torch.tensor(levels, dtype=torch.float64)
    width = torch.tensor(widths, dtype=torch.float64)
    shape = (-1,) + (1,) * volume.dim()
    lower = (level - width / 2).to(compute, copy=True).view(shape).to(volume.device)
    width = width.to(compute).view(shape).to(volume.device)
    return ((v - lower) / width).clamp_(0, 1).to(out_dtype)


def _lowers_and_inverses(levels, widths):
    return [level - w / 2 for level, w in zip(levels, widths)], [1.0 / w for w in widths]


def _window_tensors(levels, widths, device):
    """Window lower bounds and inverse widths as float64 tensors on ``device`` (GPU kernels),
    made once per (windows, device): later calls do no host-to-device copy."""
    return _cached_window_tensors(tuple(levels), tuple(widths), torch.device(device))


@functools.lru_cache(maxsize=64)
def _cached_window_tensors(levels, widths, device):
    lowers, inverses = _lowers_and_inverses(levels, widths)
    return (torch.tensor(lowers, dtype=torch.float64, device=device),
            torch.tensor(inverses, dtype=torch.float64, device=device))


def _hu_window_cpu(volume, levels, widths, out_dtype):
    volume = volume.contiguous()
    out = torch.empty((len(levels),) + tuple(volume.shape), dtype=out_dtype)
    if volume.numel() and len(levels):
        lowers, inverses = _lowers_and_inverses(levels, widths)
        compiled_module().hu_window(volume.data_ptr(), dtype_code(volume.dtype), volume.numel(),
                                    lowers, inverses, out.data_ptr(), dtype_code(out_dtype))
    return out


def _hu_window_triton(volume, levels, widths, out_dtype):
    volume = volume.contiguous()
    out = torch.empty((len(levels),) + tuple(volume.shape), dtype=out_dtype, device=volume.device)
    if volume.numel() and len(levels):
        lowers, inverses = _window_tensors(levels, widths, volume.device)
        triton_module("hu_window").hu_window_forward(volume.view(-1), lowers, inverses, out.view(len(levels), -1))
    return out


def _hu_window_cuda(volume, levels, widths, out_dtype):
    import numpy as np

    from .._cuda import launch

    volume = volume.contiguous()
    out = torch.empty((len(levels),) + tuple(volume.shape), dtype=out_dtype, device=volume.device)
    if volume.numel() and len(levels):
        lowers, inverses = _window_tensors(levels, widths, volume.device)
        kernel = f"hu_window_kernel<{CUDA_TYPE_NAMES[volume.dtype]}, {CUDA_TYPE_NAMES[out_dtype]}>"
        blocks = min(65535, (volume.numel() + 255) // 256)
        launch("hu_window", kernel, (blocks,), (256,),
               (volume, np.int64(volume.numel()), lowers, inverses, np.int32(len(levels)), out))
    return out


def _cpu_limits(volume, out_dtype) -> List[str]:
    if not (cpu_supports(volume.dtype) and cpu_supports(out_dtype)):
        return [f"cpu kernel does not handle {volume.dtype} -> {out_dtype}"]
    return []


def _cuda_limits(volume, out_dtype) -> List[str]:
    if volume.dtype not in CUDA_TYPE_NAMES or out_dtype not in (torch.float32, torch.float64):
        return [f"cuda kernel handles {sorted(map(str, CUDA_TYPE_NAMES))} -> float32/float64, "
                f"got {volume.dtype} -> {out_dtype}"]
    return []


def _hu_window_triton_nan(volume, levels, widths, out_dtype):
    out = _hu_window_triton(volume, levels, widths, out_dtype)
    # The Triton kernel's clamp turns NaN into 0; every other backend keeps NaN (the documented
    # semantics). Integer volumes (CT) hold no NaN and skip the extra pass.
    if volume.is_floating_point() and out.numel():
        out = torch.where(torch.isnan(volume).unsqueeze(0), torch.full((), math.nan, dtype=out_dtype,
                                                                       device=out.device), out)
    return out


BACKENDS = B.OpBackends("hu_window", [
    B.cpu(_hu_window_cpu, dtypes=_INPUT_DTYPES, limits=_cpu_limits),
    B.triton(_hu_window_triton_nan, dtypes=_INPUT_DTYPES),
    B.cuda(_hu_window_cuda, dtypes=tuple(CUDA_TYPE_NAMES), limits=_cuda_limits),
    B.reference(hu_window_reference),
])


def _hu_window_impl(volume: torch.Tensor, levels: List[float], widths: List[float],
                    out_dtype: torch.dtype, backend: str) -> torch.Tensor:
    # The backend is resolved here, at run time, so torch.compile never traces the selection.
    chosen = BACKENDS.select(backend, volume.device, volume.dtype, (volume, out_dtype))
    return chosen.impl(volume, levels, widths, out_dtype)


_hu_window_op = torch.library.custom_op("mmxai_fast::hu_window", mutates_args=())(_hu_window_impl)


@_hu_window_op.register_fake
def _(volume, levels, widths, out_dtype, backend):
    return volume.new_empty((len(levels),) + tuple(volume.shape), dtype=out_dtype)


def hu_window(volume: torch.Tensor, windows, out_dtype: torch.dtype = torch.float32, *,
              backend: Optional[str] = None) -> torch.Tensor:
    """Apply CT windows to a HU volume, all windows in one pass.

    Args:
        volume: ``(*S)`` HU values, int16/int32/int64/uint8/int8 or floating; any layout.
        windows: preset name(s) from :data:`HU_WINDOW_PRESETS` (``"brain"``, ``"lung"``...),
            :class:`HUWindow`, ``(level, width)`` pairs, or a ``(W, 2)`` tensor.
        out_dtype: floating output dtype.
        backend: ``None``/``"auto"``, ``"reference"``, ``"cpu"``, ``"triton"`` or ``"cuda"``.

    Returns:
        ``(W, *S)`` tensor in ``out_dtype``, ``clip((v - (level - width/2)) / width, 0, 1)``.
        NaN/Inf, on every backend: a NaN voxel gives NaN in every window, ``+inf`` gives 1 and
        ``-inf`` gives 0. Windows must have a finite ``|level| <= 1e30`` and a width in
        ``[1e-30, 1e30]`` (the kernels compute in float32).

    Raises:
        TypeError: ``volume`` is not a tensor of a supported dtype, ``out_dtype`` not floating.
        ValueError: unknown preset, non-finite level or width, or one outside the ranges above.
        BackendUnavailableError: an explicitly requested backend cannot run.
    """
    require_tensor(volume, "volume")
    if volume.dtype not in _INPUT_DTYPES:
        raise TypeError(f"volume must be an integer or floating tensor of {_INPUT_DTYPES}, got {volume.dtype}")
    if not isinstance(out_dtype, torch.dtype) or not out_dtype.is_floating_point:
        raise TypeError(f"out_dtype must be a floating torch.dtype, got {out_dtype!r}")
    parsed = parse_windows(windows)
    levels = [float(w.level) for w in parsed]
    widths = [float(w.width) for w in parsed]
    return run_op("hu_window", _hu_window_impl, volume, levels, widths, out_dtype, backend or "")
