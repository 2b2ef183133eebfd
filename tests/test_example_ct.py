import importlib.util
from pathlib import Path

import numpy as np
import pytest

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "ct_dynamic_windows.py"


def _load_example():
    spec = importlib.util.spec_from_file_location("ct_dynamic_windows", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_example_on_ct_small(tmp_path, capsys):
    pytest.importorskip("pydicom")
    example = _load_example()
    png = tmp_path / "figures" / "ct_windows.png"
    result = example.main(["--th-fail", "0.5", "--png", str(png)])
    out = capsys.readouterr().out
    assert "Selected window: [" in out and "no discriminator is trained here" in out
    assert result["schedule"].window_range == (-1024, 1000)
    # The selection, redone with np.unique on the same slice and CAM.
    hu, cam = result["hu"].numpy(), result["cam"].numpy()
    values, counts = np.unique(hu[(cam > 0.5) & (hu >= -1024) & (hu <= 3071)], return_counts=True)
    kept = values[counts >= 2]
    assert (result["window"].lower, result["window"].upper) == (kept.min(), kept.max())
    assert result["channels"].shape == (4, 128, 128)
    if importlib.util.find_spec("matplotlib") is not None:
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert [p.name for p in png.parent.iterdir()] == ["ct_windows.png"]  # no temp file left


def test_example_without_pydicom(monkeypatch, capsys):
    example = _load_example()

    def missing():
        raise ImportError("No module named 'pydicom'")

    monkeypatch.setattr(example, "load_ct_small", missing)
    result = example.main([])
    assert "pydicom is not installed: skipping" in capsys.readouterr().out
    assert set(result) == {"schedule"}
