"""CUDA C++ kernels compiled at run time with CuPy (NVRTC) and launched on torch's stream.

CuPy imports on machines without a GPU and fails on first use, so it is imported lazily here and
only after ``backend_reasons("cuda", ...)`` has confirmed a device.
"""
from __future__ import annotations

import functools
import importlib
from typing import Sequence, Tuple

import torch

from ._kernels import cuda_source_path

# C++ type names NVRTC uses for each torch dtype handled by the CUDA kernels.
CUDA_TYPE_NAMES = {
    torch.uint8: "unsigned char", torch.int8: "signed char", torch.int16: "short",
    torch.int32: "int", torch.int64: "long long", torch.float32: "float", torch.float64: "double",
}


# The NVRTC options of every CUDA C++ kernel (tests/test_aot_cuda.py compiles the sources offline
# with these same options).
NVRTC_OPTIONS = ("-std=c++17",)


@functools.lru_cache(maxsize=None)
def cuda_module(source_name: str, name_expressions: Tuple[str, ...], device_index: int = 0):
    """Compile ``kernels/cuda/<source_name>.cu`` once per process and device (CuPy also caches
    on disk); a module is loaded into the current device's context."""
    cupy = importlib.import_module("cupy")
    code = cuda_source_path(source_name).read_text()
    return cupy.RawModule(code=code, options=NVRTC_OPTIONS, name_expressions=name_expressions)


def launch(source_name: str, kernel: str, grid: Sequence[int], block: Sequence[int], args) -> None:
    """Launch ``kernel`` on torch's current stream of the tensors' device (CuPy and torch device
    guards: tensors on ``cuda:1`` run on ``cuda:1``). Tensor arguments are passed as raw pointers."""
    cupy = importlib.import_module("cupy")
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    device = tensors[0].device if tensors else torch.device("cuda", torch.cuda.current_device())
    packed = tuple(
        cupy.uint64(a.data_ptr()) if isinstance(a, torch.Tensor) else a for a in args
    )
    with torch.cuda.device(device), cupy.cuda.Device(device.index):
        module = cuda_module(source_name, (kernel,), device.index)
        with cupy.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
            module.get_function(kernel)(tuple(grid), tuple(block), packed)
