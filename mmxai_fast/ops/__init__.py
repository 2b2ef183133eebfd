"""Public functional API of the engine's kernels.

Each op has a plain-PyTorch ``*_reference`` oracle, a C++ CPU kernel and a Triton kernel; the
backend is chosen automatically from the tensors' device or forced with ``backend=``.
"""
from .windows import HU_WINDOW_PRESETS, HUWindow, hu_window, hu_window_reference

__all__ = ["HU_WINDOW_PRESETS", "HUWindow", "hu_window", "hu_window_reference"]
