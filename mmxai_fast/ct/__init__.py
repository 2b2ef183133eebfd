"""CT windows as model inputs and Dynamic Window-based Training (RadiomicGAN, Selim et al.;
background.md section 3).

- :class:`HUWindowTransform`: CT windows as channels, a DataLoader transform (CPU or GPU, int16 in).
- :class:`FixedGrowingWindowSchedule`: DWT's fixed-growing window schedule.
- :func:`select_window_from_cam`: DWT's dynamic window selection from Grad-CAM maps.
"""
from .dwt import FixedGrowingWindowSchedule, select_window_from_cam
from .transforms import HUWindowTransform

__all__ = ["HUWindowTransform", "FixedGrowingWindowSchedule", "select_window_from_cam"]
