"""``OcclusionWindows``: the sliding-window geometry of an occlusion sweep, exactly as Captum 0.9's
``Occlusion`` (see ``ops/occlusion.py`` for the two ops that use it)."""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass
from typing import Sequence, Tuple, Union, cast

import torch

from .._validation import exact_ints


def _positive_ints(value, name: str) -> Tuple[int, ...]:
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a sequence of positive ints, got {type(value).__name__}")
    out = exact_ints(value, name)
    for k, v in enumerate(out):
        if v <= 0:
            raise ValueError(f"{name}[{k}] must be a positive int, got {v}")
    return tuple(out)


@dataclass(frozen=True)
class OcclusionWindows:
    """The sliding-window positions of an occlusion sweep over the trailing dims of an input.

    Args:
        input_shape: the dims the window slides over, e.g. ``(C, D, H, W)`` of one example.
        window: window size per dim (Captum's ``sliding_window_shapes``), ``<= input_shape``.
        strides: step per dim, or one int for all dims (Captum's default is 1).

    Raises:
        TypeError: a size is not an int.
        ValueError: empty ``input_shape``, lengths differ, non-positive sizes, or a window larger
            than the input.
    """

    input_shape: Tuple[int, ...]
    window: Tuple[int, ...]
    strides: Union[int, Tuple[int, ...]] = 1

    def __post_init__(self):
        shape = _positive_ints(self.input_shape, "input_shape")
        if not shape:
            raise ValueError("input_shape must have at least one dim, got ()")
        window = _positive_ints(self.window, "window")
        strides = self.strides
        if isinstance(strides, int) and not isinstance(strides, bool):
            strides = (strides,) * len(shape)
        strides = _positive_ints(strides, "strides")
        for name, value in (("window", window), ("strides", strides)):
            if len(value) != len(shape):
                raise ValueError(f"{name} must have {len(shape)} entries like input_shape {shape}, got {value}")
        for k, (n, w) in enumerate(zip(shape, window)):
            if w > n:
                raise ValueError(f"window {window} exceeds input_shape {shape} in dim {k} ({w} > {n})")
        object.__setattr__(self, "input_shape", shape)
        object.__setattr__(self, "window", window)
        object.__setattr__(self, "strides", strides)

    @property
    def steps(self) -> Tuple[int, ...]:
        """``strides`` as one int per dim (``__post_init__`` has normalised it)."""
        return cast(Tuple[int, ...], self.strides)

    @property
    def ndim(self) -> int:
        return len(self.input_shape)

    @property
    def counts(self) -> Tuple[int, ...]:
        """Window positions per dim, ``ceil((n - w) / s) + 1`` (Captum's ``shift_counts``)."""
        return tuple((n - w + s - 1) // s + 1 for n, w, s in zip(self.input_shape, self.window, self.steps))

    @property
    def num_windows(self) -> int:
        return math.prod(self.counts)

    def position(self, index: int) -> Tuple[int, ...]:
        """Per-dim position ``(j_0, j_1, ...)`` of window ``index`` (first dim varies fastest)."""
        try:
            rest = None if isinstance(index, bool) else operator.index(index)
        except TypeError:
            rest = None
        if rest is None or not 0 <= rest < self.num_windows:
            raise ValueError(f"window index must be an int in [0, {self.num_windows}), got {index!r}")
        position = []
        for c in self.counts:
            position.append(rest % c)
            rest //= c
        return tuple(position)

    def window_box(self, index: int) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
        """``(starts, stops)`` of window ``index``, cropped at the input's border."""
        j = self.position(index)
        starts = tuple(min(p * s, n) for p, s, n in zip(j, self.steps, self.input_shape))
        stops = tuple(min(p * s + w, n) for p, s, w, n in zip(j, self.steps, self.window, self.input_shape))
        return starts, stops

    def window_slices(self, index: int) -> Tuple[slice, ...]:
        """The box of window ``index`` as slices over the trailing dims."""
        return tuple(slice(a, b) for a, b in zip(*self.window_box(index)))

    def coverage(self, dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
        """Number of windows covering each element (Captum's ``weights``), float ``input_shape``.

        Coverage is separable: the product over dims of the per-dim number of covering positions.
        """
        out = torch.ones((), dtype=dtype, device=device)
        for k, (n, w, s, c) in enumerate(zip(self.input_shape, self.window, self.steps, self.counts)):
            i = torch.arange(n, device=device)
            lo = (i - w + s).clamp(min=0) // s  # first position covering i: ceil((i - w + 1) / s)
            hi = (i // s).clamp(max=c - 1)  # last position covering i
            per_dim = (hi - lo + 1).clamp(min=0).to(dtype)
            out = out.unsqueeze(-1) * per_dim.view((1,) * k + (n,))
        return out

    def _geometry(self, device) -> torch.Tensor:
        """int64 ``[ndim, 8]`` table for the Triton kernels, one row per dim:
        (size, pitch, window, stride, count, mult, span, span_pitch). ``pitch`` is the element
        stride of a contiguous input, ``mult`` the window-index stride of a position,
        ``span = min(ceil(w / s), count)`` the most positions that can cover one element and
        ``span_pitch`` the stride of that dim when enumerating covering combinations."""
        rows, pitch, mult, span_pitch = [], math.prod(self.input_shape), 1, 1
        for n, w, s, c in zip(self.input_shape, self.window, self.steps, self.counts):
            pitch //= n
            span = min(-(-w // s), c)
            rows.append([n, pitch, w, s, c, mult, span, span_pitch])
            mult *= c
            span_pitch *= span
        return torch.tensor(rows, dtype=torch.int64, device=device)

    @property
    def _max_cover(self) -> int:
        return math.prod(min(-(-w // s), c) for w, s, c in zip(self.window, self.steps, self.counts))
