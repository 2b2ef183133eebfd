"""GPU kernel sources of mmxai_fast, installed as ``mmxai_fast.kernels``.

``triton/``: Triton kernels, one module per op. ``cuda/``: CUDA C++ compiled at run time (CuPy/NVRTC).
Load them through ``mmxai_fast._kernels``; importing this package needs neither Triton nor CUDA.
"""
