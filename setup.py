"""Build: the C++ CPU kernels in csrc/ are compiled by CMake into ``mmxai_fast._C``.

The GPU kernel sources in ``kernels/`` ship inside the package as ``mmxai_fast/kernels``
(Triton modules and CUDA C++ compiled at run time through CuPy/NVRTC).
"""
import os
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str, source_dir: Path):
        super().__init__(name, sources=[])
        self.source_dir = str(source_dir)


class CMakeBuild(build_ext):
    def build_extension(self, ext: CMakeExtension) -> None:
        import pybind11

        out_dir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_type = os.environ.get("MMXAI_FAST_BUILD_TYPE", "Release")
        native = os.environ.get("MMXAI_FAST_NATIVE", "1")
        build_temp = Path(self.build_temp) / ext.name
        build_temp.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake", ext.source_dir,
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={out_dir}",
            f"-DPYTHON_EXECUTABLE={sys.executable}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCMAKE_BUILD_TYPE={build_type}",
            f"-DMMXAI_FAST_NATIVE={'ON' if native == '1' else 'OFF'}",
        ]
        jobs = str(os.cpu_count() or 2)
        subprocess.run(configure, cwd=build_temp, check=True)
        subprocess.run(["cmake", "--build", ".", "--config", build_type, "-j", jobs],
                       cwd=build_temp, check=True)


setup(
    packages=find_packages(include=["mmxai_fast", "mmxai_fast.*"])
    + ["mmxai_fast.kernels", "mmxai_fast.kernels.triton", "mmxai_fast.kernels.cuda"],
    package_dir={"mmxai_fast": "mmxai_fast", "mmxai_fast.kernels": "kernels"},
    package_data={"mmxai_fast.kernels.cuda": ["*.cu", "*.cuh"], "mmxai_fast.pipeline": ["*.html"]},
    ext_modules=[CMakeExtension("mmxai_fast._C", ROOT)],
    cmdclass={"build_ext": CMakeBuild},
    zip_safe=False,
)
