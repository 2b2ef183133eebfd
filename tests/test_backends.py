import shutil
import subprocess
import warnings

import pytest
import torch

import mmxai_fast
from mmxai_fast import BackendUnavailableError, _backends
from mmxai_fast._kernels import kernel_dir
from mmxai_fast.ops import hu_window


def test_backends_report():
    report = mmxai_fast.backends()
    assert set(report) == {"reference", "cpu", "triton", "cuda"}
    assert report["reference"]["available"] and report["reference"]["reasons"] == []
    assert report["cpu"]["available"], report["cpu"]["reasons"]
    for name, info in report.items():
        assert info["available"] or info["reasons"], f"{name} unavailable without a reason"
    if not torch.cuda.is_available():
        assert not report["cuda"]["available"]
        assert any("CUDA" in r for r in report["cuda"]["reasons"])


def test_auto_picks_cpu_for_cpu_tensors():
    assert _backends.resolve_backend("op", None, torch.device("cpu"), ["cpu"]) == "cpu"


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(_backends.BACKEND_ENV, "reference")
    assert _backends.resolve_backend("op", None, torch.device("cpu"), ["cpu"]) == "reference"
    monkeypatch.setenv(_backends.BACKEND_ENV, "cuda")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        hu_window(torch.zeros(3, dtype=torch.int16), "brain")
    # an explicit keyword wins over the environment
    assert _backends.resolve_backend("op", "cpu", torch.device("cpu"), ["cpu"]) == "cpu"


def test_explicit_backend_that_cannot_run_raises_with_reasons(monkeypatch):
    volume = torch.zeros(4, dtype=torch.int16)
    with pytest.raises(BackendUnavailableError, match="takes CUDA tensors"):
        hu_window(volume, "brain", backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        hu_window(volume, "brain", backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        hu_window(volume, "brain", backend="fast")


def test_missing_compiled_module_falls_back_once_with_warning(monkeypatch):
    monkeypatch.setattr(_backends, "_compiled_module_error", lambda: "compiled module missing (test)")
    monkeypatch.setattr(_backends, "_warned", set())
    volume = torch.randint(-1000, 1000, (5, 6), dtype=torch.int16)
    with pytest.warns(RuntimeWarning, match="compiled module missing"):
        out = hu_window(volume, "brain")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = hu_window(volume, "brain")
    torch.testing.assert_close(out, again)
    with pytest.raises(BackendUnavailableError, match="compiled module missing"):
        hu_window(volume, "brain", backend="cpu")


def test_kernel_sources_ship_with_the_package():
    assert (kernel_dir() / "triton" / "hu_window.py").is_file()
    assert list((kernel_dir() / "cuda").glob("*.cu"))


CUDA_SOURCES = sorted((kernel_dir() / "cuda").glob("*.cu"))


@pytest.mark.nvcc
@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
@pytest.mark.parametrize("source", CUDA_SOURCES, ids=[p.name for p in CUDA_SOURCES])
def test_cuda_sources_compile_with_nvcc(source, tmp_path):
    result = subprocess.run(
        ["nvcc", "-std=c++17", "-DMMXAI_NVCC_CHECK", "-c", str(source), "-o", str(tmp_path / "k.o")],
        capture_output=True, text=True,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU twin: test_hu_window)")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_gpu_backends_match_reference(backend):
    volume = torch.randint(-1100, 3100, (3, 33, 17), dtype=torch.int16, device="cuda")
    out = hu_window(volume, ["brain", "lung"], backend=backend)
    expected = hu_window(volume.cpu(), ["brain", "lung"], backend="reference")
    torch.testing.assert_close(out.cpu(), expected, rtol=1e-5, atol=1e-6)
