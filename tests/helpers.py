"""Shared test helpers: the per-dtype tolerance table and the backend grid."""
import importlib.util

import pytest
import torch

# (rtol, atol) per output dtype, used when a backend's output is compared with the float64
# reference. Never loosened to make a test pass.
TOLERANCES = {
    torch.float64: (1e-10, 1e-12),
    torch.float32: (1e-5, 1e-6),
    torch.float16: (1e-3, 1e-3),
    torch.bfloat16: (7.9e-3, 7.9e-3),
}

HAVE_TRITON = importlib.util.find_spec("triton") is not None

# Compiled backends exercised on CPU tensors: the C++ kernels, and the Triton kernels through
# TRITON_INTERPRET=1 (select those alone with `pytest -m triton`).
CPU_BACKENDS = [
    "cpu",
    pytest.param("triton", marks=[pytest.mark.triton,
                                  pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")]),
]

FLOAT_DTYPES = [torch.float32, torch.float64, torch.float16, torch.bfloat16]


def assert_close_to_reference(actual, expected, dtype=None):
    """Compare with the (float64) reference using the tolerance of ``actual``'s dtype."""
    dtype = dtype or actual.dtype
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol)


def non_contiguous(t: torch.Tensor) -> torch.Tensor:
    """The same values as ``t`` in a non-contiguous view (every other element of a wider tensor)."""
    wide = torch.empty(t.shape[:-1] + (t.shape[-1] * 2,), dtype=t.dtype, device=t.device) if t.dim() else t.clone()
    if t.dim() == 0:
        return t
    wide[..., ::2] = t
    view = wide[..., ::2]
    assert not view.is_contiguous() or t.shape[-1] <= 1
    return view
