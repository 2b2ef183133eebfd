"""``mmxai-fast run SCRIPT``: argv, exit codes and exceptions pass through; the script runs on the engine."""
import subprocess
import sys
import textwrap

import pytest

from mmxai_fast.cli import main
from mmxai_fast.run_script import run_script

PIPELINE = textwrap.dedent("""
    import sys
    import torch
    from captum.attr import FeatureAblation   # imported before anything is patched

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 6 ** 3, 2)).eval()
    x = torch.randn(1, 1, 8, 8, 8)
    mask = torch.arange(512).reshape(1, 1, 8, 8, 8) // 64
    attr = FeatureAblation(model).attribute(x, target=0, feature_mask=mask)
    print("argv", sys.argv[1:], "name", __name__, "sum", round(float(attr.sum()), 4))
    sys.exit(int(sys.argv[1]))
""")


@pytest.fixture
def script(tmp_path):
    path = tmp_path / "pipeline.py"
    path.write_text(PIPELINE)
    return path


def test_argv_exit_code_and_report(script, capsys):
    code = main(["run", "--report", "--malloc", "system", str(script), "3", "--their-flag"])
    out, err = capsys.readouterr()
    assert code == 3
    assert "argv ['3', '--their-flag'] name __main__" in out
    assert "FeatureAblation: 1 calls, 9 evaluations" in err  # the top-level import ran on the engine


def test_results_equal_plain_python(script):
    plain = subprocess.run([sys.executable, str(script), "0"], capture_output=True, text=True, check=True)
    patched = subprocess.run([sys.executable, "-m", "mmxai_fast", "run", str(script), "0"],
                             capture_output=True, text=True, check=True)
    assert plain.stdout.split("sum")[1] == patched.stdout.split("sum")[1]


def test_exceptions_pass_through(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("raise KeyError('from the script')\n")
    with pytest.raises(KeyError, match="from the script"):
        run_script(str(bad), [])
    result = subprocess.run([sys.executable, "-m", "mmxai_fast", "run", str(bad)], capture_output=True, text=True)
    assert result.returncode == 1 and "KeyError: 'from the script'" in result.stderr


def test_captum_is_unpatched_after_the_script(script):
    import captum.attr

    original = captum.attr.FeatureAblation
    main(["run", "--batch", "keep", "--malloc", "system", str(script), "0"])
    assert captum.attr.FeatureAblation is original


def test_missing_script_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["run", str(tmp_path / "nope.py")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "SCRIPT must be an existing file" in err[0]


def test_profile_prints_each_attribution_call_and_the_phases(script, tmp_path, capsys):
    trace = tmp_path / "trace.json"
    assert main(["run", "--profile", "--malloc", "system", "--trace", str(trace), str(script), "0"]) == 0
    err = capsys.readouterr().err
    assert "#1 FeatureAblation:" in err and "9 evaluations" in err
    assert "model" in err and "engine" in err and "evaluations/s" in err
    assert trace.stat().st_size > 0


def test_malloc_keep_is_the_cli_default_and_reported(script):
    """In a subprocess: the glibc setting is process-wide."""
    result = subprocess.run([sys.executable, "-m", "mmxai_fast", "run", "--report", str(script), "0"],
                            capture_output=True, text=True, check=True)
    import platform

    expected = "freed blocks kept in the heap" if platform.libc_ver()[0] == "glibc" else "malloc tuning not used"
    assert expected in result.stderr
    system = subprocess.run([sys.executable, "-m", "mmxai_fast", "run", "--report", "--malloc", "system", str(script),
                             "0"], capture_output=True, text=True, check=True)
    assert "malloc" not in system.stderr.split("mmxai-fast report")[1]
    assert result.stdout.split("sum")[1] == system.stdout.split("sum")[1]


OCCLUSION = textwrap.dedent("""
    import torch
    from captum.attr import Occlusion

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv3d(1, 2, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv3d(2, 2, 3),
                                torch.nn.AdaptiveAvgPool3d(1), torch.nn.Flatten()).eval()
    x = torch.randn(1, 1, 16, 16, 16)
    explainer = Occlusion(model)
    attr = explainer.attribute(x, sliding_window_shapes=(1, 4, 4, 4), strides=(1, 4, 4, 4), target=0)
    torch.save(attr, __import__("sys").argv[1])
    print("incremental", getattr(explainer, "last_incremental_report", {}).get("used"))  # plain Captum: None
""")


@pytest.mark.parametrize("flag,used", [([], True), (["--incremental", "off"], False)], ids=["auto", "off"])
def test_incremental_is_auto_by_default_and_results_unchanged(tmp_path, capsys, flag, used):
    import torch

    path = tmp_path / "occlusion.py"
    path.write_text(OCCLUSION)
    code = main(["run", "--report", "--malloc", "system", *flag, str(path), str(tmp_path / "run.pt")])
    out, err = capsys.readouterr()
    assert code == 0 and f"incremental {used}" in out
    assert ("incremental inference: predicted" in err) is used  # the decision is in the report
    plain = subprocess.run([sys.executable, str(path), str(tmp_path / "plain.pt")], capture_output=True, text=True)
    assert plain.returncode == 0, plain.stderr
    torch.testing.assert_close(torch.load(tmp_path / "run.pt"), torch.load(tmp_path / "plain.pt"), atol=1e-5, rtol=0)
