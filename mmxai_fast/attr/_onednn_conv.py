"""3-D convolutions on oneDNN where PyTorch's CPU heuristic would take its slow path.

PyTorch sends a float32 ``conv3d`` on the CPU to oneDNN (mkldnn) only when the batch has more than
one sample, the kernel is larger than 3 in its last two dims, or ``N * C * D * H`` exceeds 20480;
otherwise it runs ``slow_conv3d`` (im2col + GEMM), a rule tuned for 2-D images. A batch-1 3D CNN,
which is what a Captum pipeline with ``perturbations_per_eval=1`` calls, takes that path for
every 3x3x3 layer of a 64^3 volume: on the project's 2-core AMD EPYC (AVX2, one thread) oneDNN ran
those layers 3.2-6.2x faster (4x64^3 -> 16: 392 ms against 63 ms), the whole VGG-like model 3.8x,
and the results agree to float32 rounding (see ``tests/test_onednn_conv.py``).

:func:`onednn_conv3d` replaces ``torch.nn.functional.conv3d`` (what ``nn.Conv3d`` calls) for the
duration of a block: a call that PyTorch would send to ``slow_conv3d`` goes to
``torch.mkldnn_convolution`` instead; every other call (gradients wanted, other dtypes or devices,
``padding="same"``, 1x1x1 kernels on plain-layout inputs under ``mode="auto"``, where neither
backend wins clearly) is passed through unchanged. On a ``channels_last_3d`` input the slow path
also returns the plain layout, so every later layer would run in it: there oneDNN takes the 1x1x1
kernels too (16 -> 32 channels at 32^3: 0.36 ms against 1.84 ms), and its output keeps the layout.
The replacement is process-wide while a block is open (other threads' convolutions in that time
take the same rule; their results stay within float32 rounding).
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, List, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._function_patch import FunctionPatch

__all__ = ["ConvCounter", "onednn_conv3d"]

_ORIGINAL = F.conv3d
_mode: Any = "auto"
_counters: List["ConvCounter"] = []


class ConvCounter:
    """How many ``conv3d`` calls inside a block were rerouted to oneDNN, of how many."""

    def __init__(self) -> None:
        self.rerouted = 0
        self.total = 0


def _triple(value: Any) -> Optional[List[int]]:
    if isinstance(value, int) and not isinstance(value, bool):
        return [value] * 3
    if isinstance(value, (tuple, list)) and len(value) == 3 and all(isinstance(v, int) for v in value):
        return list(value)
    return None  # "same"/"valid" padding and the like: left to PyTorch


def _reroutes(x: Tensor, weight: Tensor, bias: Optional[Tensor], stride: List[int], padding: List[int],
              dilation: List[int], groups: int) -> bool:
    if x.device.type != "cpu" or x.dtype != torch.float32 or weight.dtype != torch.float32 or x.dim() != 5:
        return False
    if x.is_mkldnn or weight.is_mkldnn or torch.compiler.is_compiling() or not torch.backends.mkldnn.is_available():
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad or (bias is not None and bias.requires_grad)):
        return False
    if (_mode == "auto" and weight.shape[2] * weight.shape[3] * weight.shape[4] == 1
            and not x.is_contiguous(memory_format=torch.channels_last_3d)):
        return False
    try:
        backend = torch._C._select_conv_backend(x, weight, bias, stride, padding, dilation, False, [0, 0, 0],
                                                groups, None)
        slow = torch._C._ConvBackend  # type: ignore[attr-defined]
        return backend in (slow.Slow3d, slow.SlowDilated3d)
    except (RuntimeError, TypeError, AttributeError):  # a PyTorch without these private helpers: no reroute
        return False


def _conv3d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride: Any = 1, padding: Any = 0,
            dilation: Any = 1, groups: int = 1) -> Tensor:
    s, p, d = (_triple(v) for v in (stride, padding, dilation))
    rerouted = (s is not None and p is not None and d is not None and isinstance(input, Tensor)
                and isinstance(weight, Tensor) and _reroutes(input, weight, bias, s, p, d, groups))
    for counter in _counters:
        counter.total += 1
        counter.rerouted += rerouted
    if rerouted:
        return torch.mkldnn_convolution(input, weight, bias, p, s, d, groups)
    return _ORIGINAL(input, weight, bias, stride, padding, dilation, groups)


@contextlib.contextmanager
def onednn_conv3d(mode: Any = "auto", counter: Optional[ConvCounter] = None) -> Iterator[None]:
    """Inside the block, ``conv3d`` calls bound for ``slow_conv3d`` run on oneDNN (module docstring).

    Args:
        mode: ``"auto"`` (kernels larger than 1x1x1, and 1x1x1 ones of channels-last inputs), True
            (every slow-path call), False (no change).
        counter: counts this block's calls and reroutes.
    """
    if mode is False:
        yield
        return

    def set_mode() -> None:
        global _mode
        _mode = mode

    with _PATCH.block(on_first=set_mode):
        if counter is not None:
            _counters.append(counter)
        try:
            yield
        finally:
            if counter is not None:
                _counters.remove(counter)


_PATCH = FunctionPatch(F, "conv3d", _conv3d)
