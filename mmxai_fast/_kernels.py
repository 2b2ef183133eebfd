"""Access to the GPU kernel sources and to raw buffers for the C++ kernels.

``kernels/`` (top level of the repository) is installed as ``mmxai_fast/kernels``; in a source
checkout (editable install, or PYTHONPATH) it is read from the repository directly.
"""
from __future__ import annotations

import contextlib
import functools
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import torch

_PACKAGE_DIR = Path(__file__).resolve().parent


@functools.lru_cache(maxsize=None)
def kernel_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "kernels", _PACKAGE_DIR.parent / "kernels"):
        if (candidate / "triton").is_dir():
            return candidate
    raise FileNotFoundError(f"mmxai_fast kernel sources not found next to {_PACKAGE_DIR}")


@functools.lru_cache(maxsize=None)
def triton_module(name: str) -> ModuleType:
    """Import ``kernels/triton/<name>.py`` (Triton reads TRITON_INTERPRET at this moment)."""
    qualified = f"mmxai_fast.kernels.triton.{name}"
    if qualified in sys.modules:
        return sys.modules[qualified]
    path = kernel_dir() / "triton" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(qualified, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[qualified] = module
    spec.loader.exec_module(module)
    return module


def cuda_source_path(name: str) -> Path:
    return kernel_dir() / "cuda" / f"{name}.cu"


_DTYPE_CODES = {
    torch.float16: "f16", torch.bfloat16: "bf16", torch.float32: "f32", torch.float64: "f64",
    torch.uint8: "u8", torch.bool: "bool", torch.int8: "i8", torch.int16: "i16",
    torch.int32: "i32", torch.int64: "i64",
}


def dtype_code(dtype: torch.dtype) -> str:
    """The dtype code the C++ kernels understand (see csrc/common.h)."""
    try:
        return _DTYPE_CODES[dtype]
    except KeyError:
        raise TypeError(f"the cpu backend does not support dtype {dtype}") from None


def cpu_supports(dtype: torch.dtype) -> bool:
    return dtype in _DTYPE_CODES


def device_guard(tensor: torch.Tensor):
    """``torch.cuda.device(tensor.device)`` for CUDA tensors (Triton launches on the current
    device, whatever device the tensors are on); a no-op context otherwise."""
    if tensor.is_cuda:
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()
