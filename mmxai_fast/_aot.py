"""Ahead-of-time compilation of the Triton kernels for a CUDA architecture, without a GPU.

``aot_target(arch)`` makes Triton's active driver a fake one that reports
``GPUTarget("cuda", arch, 32)`` and device ``arch`` (Triton caches compiled kernels per device, so
each architecture must look like its own device), and turns every ``kernel[grid](...)`` launch
into ``warmup=True`` compilation. The launchers then run unchanged on ``meta`` tensors of real
sizes: argument construction, specialisation (int32 vs int64 scalars, divisibility) and the
compiled code are exactly what a GPU call would produce. ``resource_usage`` runs the ptxas that
ships with Triton (``-v``) for registers, spills and shared memory.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, List

import torch


def _fake_driver(arch: int):
    from triton.backends.compiler import GPUTarget
    from triton.backends.driver import DriverBase

    class FakeCudaDriver(DriverBase):
        @staticmethod
        def is_active():
            return False

        def get_current_target(self):
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self):
            return arch  # one device per architecture: Triton's kernel cache is per device

        def set_current_device(self, device):
            pass

        def get_current_stream(self, device=None):
            return 0

        def get_active_torch_device(self):
            return torch.device("meta")

        def get_device_interface(self):
            return torch.cuda

        def map_python_to_cpp_type(self, ty: str) -> str:
            return ty

        def get_benchmarker(self):
            raise RuntimeError("no GPU: ahead-of-time compilation only")

        def get_empty_cache_for_benchmark(self):
            raise RuntimeError("no GPU: ahead-of-time compilation only")

        def clear_cache(self, cache):
            pass

    return FakeCudaDriver()


@contextlib.contextmanager
def aot_target(arch: int) -> Iterator[List]:
    """Within the block, Triton launches compile for ``sm_<arch>`` instead of running; the list
    yielded collects the ``CompiledKernel`` of every launch, in order."""
    from triton.runtime import driver
    from triton.runtime.jit import KernelInterface

    compiled: List = []
    original = KernelInterface.__getitem__

    def compile_only(self, grid):
        def launch(*args, **kwargs):
            kernel = self.run(*args, grid=grid, warmup=True, **kwargs)
            # Python floats become fp32 kernel scalars once compiled (the interpreter keeps fp64).
            names = [p.name for p in self.params]
            kernel.python_float_args = [n for n, a in zip(names, args) if isinstance(a, float)] + \
                [n for n, a in kwargs.items() if isinstance(a, float)]
            compiled.append(kernel)
            return kernel
        return launch

    driver.set_active(_fake_driver(arch))
    KernelInterface.__getitem__ = compile_only
    try:
        yield compiled
    finally:
        KernelInterface.__getitem__ = original
        driver.reset_active() if _has_real_driver() else setattr(driver, "_active", None)


def _has_real_driver() -> bool:
    try:
        from triton.runtime.driver import _create_driver
        _create_driver()
        return True
    except RuntimeError:
        return False


@dataclass(frozen=True)
class Usage:
    name: str
    arch: str
    registers: int
    spill_stores: int
    spill_loads: int
    shared: int
    stack: int


def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``sm_<arch>`` (it ships two)."""
    from triton.backends.nvidia.compiler import get_ptxas
    return get_ptxas(arch).path


def kernel_arch(kernel) -> str:
    """The ``.target`` of the kernel's PTX, e.g. ``sm_90a``."""
    match = re.search(r"^\.target\s+(\S+)", kernel.asm["ptx"], re.M)
    return match.group(1) if match else "?"


def resource_usage(kernel) -> Usage:
    """Registers, spill bytes and static + Triton-managed shared memory of a compiled kernel."""
    arch = kernel_arch(kernel)
    with tempfile.TemporaryDirectory() as tmp:
        ptx = Path(tmp) / "k.ptx"
        ptx.write_text(kernel.asm["ptx"])
        command = [ptxas_path(kernel.metadata.target.arch), f"--gpu-name={arch}", "-v", str(ptx),
                   "-o", str(Path(tmp) / "k.o")]
        result = subprocess.run(command, capture_output=True, text=True, check=True)
    text = result.stderr + result.stdout

    def number(pattern: str) -> int:
        found = re.search(pattern, text)
        return int(found.group(1)) if found else 0

    return Usage(name=kernel.name, arch=arch, registers=number(r"Used (\d+) registers"),
                 spill_stores=number(r"(\d+) bytes spill stores"), spill_loads=number(r"(\d+) bytes spill loads"),
                 shared=kernel.metadata.shared + number(r"(\d+) bytes smem"),
                 stack=number(r"(\d+) bytes stack frame"))
