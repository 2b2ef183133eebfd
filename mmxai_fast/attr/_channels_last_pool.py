"""2x2x2 average pooling that stays in ``torch.channels_last_3d``.

PyTorch's CPU ``avg_pool3d`` has no channels-last kernel: a ``channels_last_3d`` input is copied to
the plain layout, pooled there and returned in the plain layout, so every layer after it (a
DenseNet's transition, then a whole dense block) runs in the plain layout and each oneDNN
convolution reorders its input and output again. On the project's 2-core AMD EPYC (AVX2) that pool
took 16.4 ms for a 16 x 64^3 activation against 6.7 ms in the plain layout; :func:`avg_pool3d`
below takes 2.4 ms and keeps the layout, and a batch-1 DenseNet-like call in channels_last_3d ran
1.22x faster with it (``benchmarks/bench_channels_last_pool.py``, one run).

:func:`channels_last_pooling` replaces ``torch.nn.functional.avg_pool3d`` (what ``nn.AvgPool3d``
calls) for the duration of a block. Only the common transition pool goes the new way: kernel 2 and
stride 2 (or None) along all three axes, no padding, no ``divisor_override``, a float32/float64
``channels_last_3d`` input with more than one channel, and ``ceil_mode=False`` or even sizes. The
eight voxels are added in pairs along D, H and W and scaled by 1/8 (float32 rounding differs from
PyTorch's running sum in the last bit; the tests bound both against float64). Every other call goes
to PyTorch unchanged. The replacement is process-wide while a block is open.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from ._function_patch import FunctionPatch

__all__ = ["avg_pool3d", "channels_last_pooling"]

_ORIGINAL = F.avg_pool3d


def _all_equal(value: Any, n: int) -> bool:
    """``value`` is ``n``, or ``n`` along each of three axes."""
    return value == n or (isinstance(value, (tuple, list)) and len(value) == 3 and all(v == n for v in value))


def _takes_fast_path(x: Any, kernel_size: Any, stride: Any, padding: Any, ceil_mode: bool,
                     divisor_override: Any) -> bool:
    if not (isinstance(x, Tensor) and x.dim() == 5 and x.dtype in (torch.float32, torch.float64)):
        return False
    if torch.compiler.is_compiling():
        return False
    if not (_all_equal(kernel_size, 2) and (stride is None or _all_equal(stride, 2) or stride == [])
            and _all_equal(padding, 0)):
        return False
    if divisor_override is not None or x.shape[1] < 2 or min(x.shape[2:]) < 2:
        return False
    if ceil_mode and any(s % 2 for s in x.shape[2:]):
        return False
    return x.is_contiguous(memory_format=torch.channels_last_3d) and not x.is_contiguous()


def avg_pool3d(input: Tensor, kernel_size: Any, stride: Any = None, padding: Any = 0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Any = None) -> Tensor:
    """``F.avg_pool3d`` with the channels-last fast path (module docstring)."""
    if not _takes_fast_path(input, kernel_size, stride, padding, ceil_mode, divisor_override):
        return _ORIGINAL(input, kernel_size, stride, padding, ceil_mode, count_include_pad, divisor_override)
    n, c, d, h, w = input.shape
    d2, h2, w2 = d // 2, h // 2, w // 2
    # [N, D, H, W, C] view of the channels-last memory, odd last slices dropped (floor mode)
    v = input.permute(0, 2, 3, 4, 1)[:, :2 * d2, :2 * h2, :2 * w2].reshape(n, d2, 2, h2, 2, w2, 2, c)
    s = v[:, :, 0] + v[:, :, 1]
    s = s[:, :, :, 0] + s[:, :, :, 1]
    s = s[:, :, :, :, 0] + s[:, :, :, :, 1]
    return s.mul_(0.125).permute(0, 4, 1, 2, 3)


_PATCH = FunctionPatch(F, "avg_pool3d", avg_pool3d)


@contextlib.contextmanager
def channels_last_pooling(enabled: bool = True) -> Iterator[None]:
    """Inside the block, ``F.avg_pool3d`` takes :func:`avg_pool3d` (module docstring)."""
    if not enabled:
        yield
        return
    with _PATCH.block():
        yield
