"""Keep freed memory in the process (glibc malloc) for ``mmxai-fast run``.

A 3D CNN frees and re-allocates the same tens of megabytes of activations at every call. glibc
serves blocks above its mmap threshold (128 KiB to 32 MiB, adapted at run time) with fresh
``mmap`` pages and gives them back with ``munmap`` (and trims the heap top), so each model call
faults its activations in again and the kernel zeroes them. On the project's 2-core VM that was
half of a batch-1 DenseNet-like model's time (Occlusion, 4x64^3: 36.7 s with the defaults, 19.0 s
with ``MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=1e11``, same process layout). :func:`keep_freed_memory`
sets the same two options with ``mallopt``: freed blocks go back to the heap and are reused; the
process keeps its peak memory instead of returning it to the system.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Optional

__all__ = ["keep_freed_memory"]

_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_NO_TRIM = 2 ** 31 - 1  # mallopt takes an int: about 2 GiB of free heap top before a trim


def keep_freed_memory() -> Optional[str]:
    """Tune glibc malloc as the module docstring says; returns a note of what was done (or why not)."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return f"malloc tuning not used: needs glibc on Linux, got {platform.system()} {platform.libc_ver()[0] or '?'}"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        done = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _NO_TRIM) == 1
    except (OSError, AttributeError) as err:
        return f"malloc tuning not used: {err}"
    if not done:
        return "malloc tuning not used: mallopt refused the settings"
    return "malloc: freed blocks kept in the heap (M_MMAP_MAX=0, M_TRIM_THRESHOLD=2 GiB)"
