"""CT windows as channels: :class:`HUWindowTransform`."""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch

from ..ops.hu_window import hu_window, parse_windows

__all__ = ["HUWindowTransform"]


class HUWindowTransform:
    """Turn a HU volume into one channel per CT window (``hu_window`` on every call).

    Usable as a ``Dataset`` transform (per sample, CPU) or on a collated batch on the GPU; the
    input may stay int16 HU until here, so the loader moves 2 bytes per voxel.

    Args:
        windows: preset name(s) (``"brain"``, ``"lung"``...), :class:`~mmxai_fast.ops.HUWindow`,
            ``(level, width)`` pairs, a mapping or a ``(W, 2)`` tensor (see
            :func:`mmxai_fast.ops.hu_window`).
        channel_dim: ``None``: the windows become a new leading dim, ``(*S) -> (W, *S)``. An int
            ``c``: the input has a singleton channel at dim ``c`` that is replaced by the windows,
            e.g. ``c = 0``: ``(1, D, H, W) -> (W, D, H, W)`` (MONAI's channel-first) and
            ``c = 1``: ``(N, 1, D, H, W) -> (N, W, D, H, W)`` (a batch).
        out_dtype: floating output dtype.
        backend: forwarded to :func:`~mmxai_fast.ops.hu_window`.

    Example:
        >>> t = HUWindowTransform(["brain", "subdural", "bone"])
        >>> t(torch.zeros(4, 8, 8, dtype=torch.int16)).shape
        torch.Size([3, 4, 8, 8])

    Raises:
        ValueError: at construction for bad windows; at call when the channel dim is not a
            singleton.
        TypeError: at call for inputs that are neither tensors nor numpy arrays.
    """

    def __init__(self, windows, *, channel_dim: Optional[int] = None, out_dtype: torch.dtype = torch.float32,
                 backend: Optional[str] = None) -> None:
        self.windows = parse_windows(windows)
        if not self.windows:
            raise ValueError("windows must name at least one window, got none")
        if channel_dim is not None and (isinstance(channel_dim, bool) or not isinstance(channel_dim, int)):
            raise TypeError(f"channel_dim must be None or an int, got {channel_dim!r}")
        self.channel_dim = channel_dim
        self.out_dtype = out_dtype
        self.backend = backend

    def __call__(self, volume) -> torch.Tensor:
        if isinstance(volume, np.ndarray):
            volume = torch.from_numpy(np.ascontiguousarray(volume))
        if not isinstance(volume, torch.Tensor):
            raise TypeError(f"volume must be a torch.Tensor or numpy array, got {type(volume).__name__}")
        if self.channel_dim is None:
            return hu_window(volume, self.windows, self.out_dtype, backend=self.backend)
        dim = self.channel_dim % max(volume.dim(), 1)
        if volume.dim() == 0 or volume.shape[dim] != 1:
            raise ValueError(f"volume must have a singleton channel at dim {self.channel_dim}, "
                             f"got shape {tuple(volume.shape)}")
        out = hu_window(volume.squeeze(dim), self.windows, self.out_dtype, backend=self.backend)
        return out if dim == 0 else out.movedim(0, dim).contiguous()

    def __repr__(self) -> str:
        windows = ", ".join(f"({w.level:g}, {w.width:g})" for w in self.windows)
        return f"HUWindowTransform(windows=[{windows}], channel_dim={self.channel_dim}, out_dtype={self.out_dtype})"
