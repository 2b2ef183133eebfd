"""The CUDA C++ kernels compiled offline for sm_80 and sm_90 with the launcher's NVRTC options.

No NVRTC library is installed here (neither cuda-python nor CuPy), so nvcc compiles the device
code (``-cubin``) with exactly ``mmxai_fast._cuda.NVRTC_OPTIONS`` plus ``-DMMXAI_NVCC_CHECK``,
which only adds explicit instantiations of the templates the launchers name. ``--resource-usage``
gives registers and spills: the memory-bound hu_window kernel must not spill.
"""
import re
import shutil
import subprocess

import pytest

from mmxai_fast._cuda import NVRTC_OPTIONS
from mmxai_fast._kernels import kernel_dir

pytestmark = [pytest.mark.aot, pytest.mark.nvcc,
              pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")]

SOURCES = sorted((kernel_dir() / "cuda").glob("*.cu"))


@pytest.mark.parametrize("arch", [80, 90])
@pytest.mark.parametrize("source", SOURCES, ids=lambda p: p.stem)
def test_cuda_source_compiles_for_arch(source, arch, tmp_path):
    out = tmp_path / "k.cubin"
    result = subprocess.run(["nvcc", *NVRTC_OPTIONS, "-DMMXAI_NVCC_CHECK", f"-arch=sm_{arch}", "-cubin",
                             "--resource-usage", str(source), "-o", str(out)],
                            check=False, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert out.stat().st_size > 0
    log = result.stdout + result.stderr
    functions = re.findall(r"Function properties for (\S+)", log) or re.findall(r"Compiling entry function '(\S+)'", log)
    assert functions, log[-2000:]
    spills = [int(n) for n in re.findall(r"(\d+) bytes spill (?:stores|loads)", log)]
    assert not any(spills), log[-3000:]
    assert f"sm_{arch}" in log, log[-2000:]
