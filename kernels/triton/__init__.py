"""Triton kernels, one module per op (imported lazily by mmxai_fast._kernels.triton_module)."""
