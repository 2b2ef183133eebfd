"""Dynamic Window-based Training (DWT; RadiomicGAN, Selim et al.; background.md section 3).

Two ways of choosing the CT window a model sees during training:

- fixed growing (:class:`FixedGrowingWindowSchedule`): start with ``[-1024, -769]`` HU and widen
  the upper bound by 256 HU whenever the metric passes a threshold or the epochs spent at the
  current window reach a cap, until the full HU range is covered;
- dynamic selection (:func:`select_window_from_cam`): from the Grad-CAM maps of a frozen
  discriminator, collect the HU values where the CAM exceeds ``th_fail``, discard the values that
  occur only once, and take the range of what remains (recomputed every epoch).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Tuple

import torch

from .._validation import finite_real, int_at_least, require_floating, require_tensor
from ..ops.thresholded_value_histogram import thresholded_value_histogram
from ..ops.hu_window import HUWindow

__all__ = ["FixedGrowingWindowSchedule", "select_window_from_cam", "FULL_HU_RANGE"]

#: The 12-bit CT range in HU. RadiomicGAN used ``(-1024, 1000)``.
FULL_HU_RANGE = (-1024, 3071)


def _real(value, name: str) -> float:
    return finite_real(value, name)


@dataclass
class FixedGrowingWindowSchedule:
    """DWT's fixed-growing window: ``[lower, upper]`` with ``upper`` widened by ``step_hu``.

    Call :meth:`step` once at the end of every epoch with the epoch's metric (accuracy in the
    paper). The window widens when the metric passes ``metric_threshold`` (``>=``, or ``<=`` with
    ``higher_is_better=False``) or when ``max_epochs_per_window`` epochs were spent at the current
    window, until ``upper`` reaches ``full_range[1]`` (the last step is clipped to it).

    Args:
        metric_threshold: the metric value that moves to the next window.
        max_epochs_per_window: epochs after which the window widens anyway (int >= 1).
        start: initial ``(lower, upper)`` in HU; the paper's ``(-1024, -769)`` (256 HU values).
        step_hu: HU added to ``upper`` per widening (> 0).
        full_range: ``(lower, upper)`` of the last window; default ``(-1024, 3071)``, the paper
            used ``(-1024, 1000)``.
        higher_is_better: False for a loss-like metric.

    Attributes:
        upper: current upper bound in HU (the lower bound stays ``start[0]``).
        history: ``(epoch, HUWindow)`` of every widening, in order.

    Example:
        >>> s = FixedGrowingWindowSchedule(metric_threshold=0.9, max_epochs_per_window=5)
        >>> s.window_range, s.step(0.95, epoch=0), s.window_range
        ((-1024.0, -769.0), True, (-1024.0, -513.0))
    """

    metric_threshold: float
    max_epochs_per_window: int
    start: Tuple[float, float] = (-1024, -769)
    step_hu: float = 256
    full_range: Tuple[float, float] = FULL_HU_RANGE
    higher_is_better: bool = True
    upper: float = field(init=False)
    history: List[Tuple[int, HUWindow]] = field(init=False, default_factory=list)
    _window_start_epoch: int = field(init=False, default=0, repr=False)
    _last_epoch: Optional[int] = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self.metric_threshold = _real(self.metric_threshold, "metric_threshold")
        int_at_least(self.max_epochs_per_window, "max_epochs_per_window", 1)
        lower, upper = (_real(v, "start") for v in self.start)
        full_lower, full_upper = (_real(v, "full_range") for v in self.full_range)
        self.step_hu = _real(self.step_hu, "step_hu")
        if self.step_hu <= 0:
            raise ValueError(f"step_hu must be > 0, got {self.step_hu}")
        if not full_lower <= lower < upper <= full_upper:
            raise ValueError(f"need full_range[0] <= start[0] < start[1] <= full_range[1], got start "
                             f"{tuple(self.start)} and full_range {tuple(self.full_range)}")
        self.start, self.full_range = (lower, upper), (full_lower, full_upper)
        self.upper = upper

    @property
    def window_range(self) -> Tuple[float, float]:
        """The current ``(lower, upper)`` in HU."""
        return (self.start[0], self.upper)

    @property
    def window(self) -> HUWindow:
        """The current window, for :func:`~mmxai_fast.ops.hu_window` or :class:`HUWindowTransform`."""
        return HUWindow.from_range(*self.window_range)

    @property
    def done(self) -> bool:
        """The window covers the full range."""
        return self.upper >= self.full_range[1]

    def windows(self) -> List[HUWindow]:
        """Every window of the schedule, from ``start`` to the full range."""
        uppers, upper = [self.start[1]], self.start[1]
        while upper < self.full_range[1]:
            upper = min(upper + self.step_hu, self.full_range[1])
            uppers.append(upper)
        return [HUWindow.from_range(self.start[0], u) for u in uppers]

    def step(self, metric: float, epoch: int) -> bool:
        """Report the metric of epoch ``epoch`` (0-based, increasing); returns whether the window
        widened (the new window applies from epoch ``epoch + 1``).

        Raises:
            ValueError: non-finite metric, or an epoch not after the previous one.
        """
        metric = _real(metric, "metric")
        int_at_least(epoch, "epoch", 0)
        if self._last_epoch is not None and epoch <= self._last_epoch:
            raise ValueError(f"epoch must increase from call to call, got {epoch} after {self._last_epoch}")
        self._last_epoch = epoch
        if self.done:
            return False
        passed = metric >= self.metric_threshold if self.higher_is_better else metric <= self.metric_threshold
        capped = epoch - self._window_start_epoch + 1 >= self.max_epochs_per_window
        if not (passed or capped):
            return False
        self.upper = min(self.upper + self.step_hu, self.full_range[1])
        self._window_start_epoch = epoch + 1
        self.history.append((epoch, self.window))
        return True

    def state_dict(self) -> dict:
        """The schedule's state, for checkpoints."""
        return {"upper": self.upper, "window_start_epoch": self._window_start_epoch,
                "last_epoch": self._last_epoch,
                "history": [(e, w.lower, w.upper) for e, w in self.history]}

    def load_state_dict(self, state: dict) -> None:
        self.upper = float(state["upper"])
        self._window_start_epoch = int(state["window_start_epoch"])
        self._last_epoch = state["last_epoch"]
        self.history = [(e, HUWindow.from_range(lo, hi)) for e, lo, hi in state["history"]]


def select_window_from_cam(hu: torch.Tensor, cam: torch.Tensor, th_fail: float, *,
                           hu_range: Tuple[int, int] = FULL_HU_RANGE, min_count: int = 2,
                           per_image: bool = True, backend: Optional[str] = None) -> Optional[HUWindow]:
    """DWT's dynamic window: the range of the HU values where the CAM exceeds ``th_fail``.

    For each image, the HU values of the pixels with ``cam > th_fail`` are counted
    (:func:`~mmxai_fast.ops.thresholded_value_histogram`, one batched pass on the images' device);
    values seen fewer than ``min_count`` times in that image are noise and dropped; the window is
    ``[min, max]`` of the values kept in any image. A single kept value ``v`` gives ``[v, v + 1]``.

    Args:
        hu: ``(N, H, W)`` or ``(N, D, H, W)`` (any ``(N, *S)`` with at least 3 dims) HU images,
            int16/int32 or floating (rounded to integers).
        cam: floating Grad-CAM maps upsampled to the images, the same shape and device as ``hu``.
        th_fail: CAM threshold (the paper's CAMs are in [0, 1]).
        hu_range: integer ``(low, high)``; HU outside it are ignored.
        min_count: values occurring fewer times are dropped (2: "values that occur only once").
        per_image: count per image (the paper); False pools all images before ``min_count``.
        backend: forwarded to the histogram op.

    Returns:
        The selected :class:`~mmxai_fast.ops.HUWindow`, or None when no value survives.

    Raises:
        ValueError: ``hu`` with fewer than 3 dims, shape/device mismatch, bad ``hu_range`` or
            ``min_count``.
        TypeError: non-tensor inputs, non-floating ``cam``.
    """
    require_tensor(hu, "hu")
    require_tensor(cam, "cam")
    if hu.dim() < 3:
        raise ValueError(f"hu must be a batch of images (N, H, W) or (N, D, H, W), got shape {tuple(hu.shape)}; "
                         "add a leading dim for a single image")
    require_floating(cam, "cam")
    if cam.shape != hu.shape:
        raise ValueError(f"cam must have the shape of hu {tuple(hu.shape)} (upsample Grad-CAM maps to the "
                         f"images), got {tuple(cam.shape)}")
    if len(hu_range) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in hu_range):
        raise ValueError(f"hu_range must be two ints (low, high), got {hu_range!r}")
    int_at_least(min_count, "min_count", 1)
    low, high = hu_range
    counts = thresholded_value_histogram(hu, cam, th_fail, low, high, batch_dims=1, backend=backend)
    kept = (counts >= min_count).any(0) if per_image else counts.sum(0) >= min_count
    values = kept.nonzero()
    if values.numel() == 0:
        return None
    lower, upper = low + int(values[0, 0]), low + int(values[-1, 0])
    return HUWindow.from_range(lower, max(upper, lower + 1))
