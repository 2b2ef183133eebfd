import importlib
import json
import shutil
import subprocess
import warnings

import pytest
import torch

import mmxai_fast
from mmxai_fast import BackendUnavailableError, _backends
from mmxai_fast._backends import NoBackendError
from mmxai_fast._kernels import kernel_dir
from mmxai_fast.ops import hu_window, perturb


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


PERTURB = importlib.import_module("mmxai_fast.ops.perturb").BACKENDS
HU = importlib.import_module("mmxai_fast.ops.hu_window").BACKENDS
CPU = torch.device("cpu")


def test_auto_picks_cpu_for_cpu_tensors():
    assert PERTURB.select(None, CPU, torch.float32).name == "cpu"


def test_environment_variable_forces_backend(monkeypatch):
    monkeypatch.setenv(_backends.BACKEND_ENV, "reference")
    assert PERTURB.select(None, CPU, torch.float32).name == "reference"
    monkeypatch.setenv(_backends.BACKEND_ENV, "cuda")
    with pytest.raises(BackendUnavailableError, match="cuda"):
        hu_window(torch.zeros(3, dtype=torch.int16), "brain")
    # an explicit keyword wins over the environment
    assert PERTURB.select("cpu", CPU, torch.float32).name == "cpu"


def test_explicit_backend_that_cannot_run_raises_with_reasons(monkeypatch):
    volume = torch.zeros(4, dtype=torch.int16)
    with pytest.raises(BackendUnavailableError, match="takes cuda tensors, got cpu"):
        hu_window(volume, "brain", backend="cuda")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailableError, match="TRITON_INTERPRET"):
        hu_window(volume, "brain", backend="triton")
    with pytest.raises(ValueError, match="backend must be one of"):
        hu_window(volume, "brain", backend="fast")
    with pytest.raises(BackendUnavailableError, match="perturb has no cuda implementation"):
        perturb(torch.zeros(3), torch.zeros(3, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool),
                backend="cuda")


def test_input_dependent_reasons():
    cpu = HU.backends["cpu"]
    assert cpu.not_supported_reasons(CPU, torch.int16, (torch.zeros(1, dtype=torch.int16), torch.float32)) == []
    why = cpu.not_supported_reasons(CPU, torch.int16, (torch.zeros(1, dtype=torch.int16), torch.complex64))
    assert why and "int16 -> torch.complex64" in why[0]
    # declared dtypes are checked before the limits
    assert "takes float16, bfloat16, float32, float64, got int32" in \
        PERTURB.backends["cpu"].not_supported_reasons(CPU, torch.int32)[0]
    meta = torch.device("meta")
    assert "takes" in PERTURB.backends["reference"].not_supported_reasons(meta)[0]


def test_no_backend_lists_every_backends_reasons():
    with pytest.raises(NoBackendError) as info:
        PERTURB.select(None, torch.device("meta"), torch.float32)
    message = str(info.value)
    for name in ("cpu:", "triton:", "reference:"):
        assert name in message
    assert "got meta" in message


def test_missing_compiled_module_falls_back_once_with_warning(monkeypatch):
    monkeypatch.setattr(_backends, "_compiled_module_error", lambda: "compiled module missing (test)")
    monkeypatch.setattr(_backends, "_warned", set())
    volume = torch.randint(-1000, 1000, (5, 6), dtype=torch.int16)
    with pytest.warns(RuntimeWarning, match="compiled module missing"):
        out = hu_window(volume, "brain")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        again = hu_window(volume, "brain")
        # one warning per missing backend, not one per op
        perturb(torch.zeros(3), torch.zeros(3, dtype=torch.int64), torch.ones(1, 1, dtype=torch.bool))
    torch.testing.assert_close(out, again)
    with pytest.raises(BackendUnavailableError, match="compiled module missing"):
        hu_window(volume, "brain", backend="cpu")


def test_backend_table_shows_which_backend_implements_which_op():
    rows = {(r["op"], r["backend"]): r for r in _backends.backend_table()}
    ops = {op for op, _ in rows}
    assert ops == {"perturb", "occlusion_batch", "occlusion_attribution", "shapley_coalitions",
                   "shapley_accumulate", "hu_window", "vq_nearest", "codeword_histogram",
                   "thresholded_value_histogram", "slic"}
    assert {op for op in ops if rows[op, "cuda"]["implemented"]} == {"hu_window", "slic"}
    for op in ops:
        assert rows[op, "reference"]["usable_on"] == ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
        assert rows[op, "cpu"]["implemented"] and rows[op, "triton"]["implemented"]
        for name in _backends.BACKEND_NAMES:
            r = rows[op, name]
            assert bool(r["usable_on"]) != bool(r["reasons"]), r
    if not torch.cuda.is_available():
        assert rows["hu_window", "cuda"]["reasons"] == ["no CUDA device visible to torch"]
        assert rows["perturb", "cuda"]["reasons"] == ["perturb has no cuda implementation"]


def test_backends_command_prints_the_table(capsys):
    from mmxai_fast.cli import main

    assert main(["backends"]) == 0
    lines = capsys.readouterr().out.splitlines()
    header = lines[0].split()
    assert header == ["op", "reference", "cpu", "triton", "cuda"]
    table = {line.split()[0]: line for line in lines[1:11]}
    assert table["perturb"].rstrip().endswith("-")
    assert not table["hu_window"].rstrip().endswith("-") and not table["slic"].rstrip().endswith("-")
    assert main(["backends", "--json"]) == 0
    assert len(json.loads(capsys.readouterr().out)) == 10 * 4


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


_EAGER_CALLS = """
import sys, torch
import mmxai_fast.ops as ops
x = torch.randn(2, 8, 8)
ops.perturb(x, torch.zeros(1, 8, 8, dtype=torch.int64), torch.ones(3, 1, dtype=torch.bool))
ops.perturb(x, torch.zeros(1, 8, 8, dtype=torch.int64), torch.ones(3, 1, dtype=torch.bool), out=torch.empty(3, 2, 8, 8))
windows = ops.OcclusionWindows((2, 8, 8), (1, 4, 4), 2)
ops.occlusion_batch(x, windows, torch.arange(3))
ops.occlusion_attribution(torch.randn(windows.num_windows), windows)
perms = ops.random_permutations(2, 4)
ops.shapley_coalitions(perms, *ops.shapley_prefix_rows(2, 4))
ops.shapley_accumulate(torch.randn(2, 5), perms, torch.zeros(4), torch.zeros(4))
ops.hu_window(torch.zeros(4, 4, dtype=torch.int16), "brain")
idx, _ = ops.vq_nearest(torch.randn(5, 3), torch.randn(4, 3))
ops.codeword_histogram(idx, 4)
ops.thresholded_value_histogram(torch.zeros(5), torch.ones(5), 0.5, 0, 3)
ops.slic(torch.rand(6, 7, 5), n_segments=4, channel_axis=None)
print("dynamo" if "torch._dynamo" in sys.modules else "eager")
"""


def test_eager_calls_do_not_import_dynamo():
    """The first kernel call of a process must not pay for importing torch._dynamo (~2 s)."""
    import os
    import sys

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    result = subprocess.run([sys.executable, "-c", _EAGER_CALLS], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "eager"


def test_resolve_backend_for_undeclared_ops():
    assert _backends.resolve_backend("op", None, CPU, ["cpu"]) == "cpu"
    assert _backends.resolve_backend("op", "reference", CPU, ["cpu"]) == "reference"
    with pytest.raises(BackendUnavailableError, match="op has no cuda implementation"):
        _backends.resolve_backend("op", "cuda", CPU, ["cpu"])
    assert "op" not in _backends.registered_ops()
