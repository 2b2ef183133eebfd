"""Misuse of ``mmxai-fast explain``: every bad argument exits 2 with one line naming the flag,
before the explanation starts (and before the model runs, except its one test run)."""
import importlib
import json
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cli_models import CountingVGG3D, TupleModel
from mmxai_fast.cli import main
from pipeline_data import save, small_model, volumes, write_case

explain_module = importlib.import_module("mmxai_fast.pipeline.explain")  # the package shadows it with the function

KW = {"in_channels": 2, "widths": [4, 8], "hidden": 8}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli_errors")
    paths, roi = write_case(tmp, shape=(12, 10, 8))
    torch.save(small_model().state_dict(), tmp / "w.pt")
    torch.save(TupleModel().state_dict(), tmp / "conv.pt")
    torch.jit.save(torch.jit.script(small_model()), tmp / "ts.pt")
    return {"tmp": tmp, **paths, "roi": roi, "w": str(tmp / "w.pt"), "conv": str(tmp / "conv.pt"),
            "ts": str(tmp / "ts.pt")}


@pytest.fixture
def no_work(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the explanation started")

    monkeypatch.setattr(explain_module, "explain", refuse)
    CountingVGG3D.calls = 0


def _fails(argv, capsys, message=None):
    with pytest.raises(SystemExit) as info:
        main(["explain", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2, (argv, err)
    assert len(err) == 1 and err[0].startswith("mmxai-fast explain: error: "), err
    if message is not None:
        assert message in err[0], (message, err[0])
    return err[0]


def _case(files):
    return ["--modality", f"t1={files['t1']}", f"t2={files['t2']}"]


def _counting(files):
    return ["--state-dict", files["w"], "--factory", "cli_models:CountingVGG3D", "--factory-kwargs", json.dumps(KW)]


def _factory(files, name):
    return ["--state-dict", files["conv"], "--factory", f"cli_models:{name}"]


def test_every_misuse_exits_2_with_one_line_before_work(files, tmp_path, capsys, no_work):
    out = ["--out", str(tmp_path / "never")]
    ok = _case(files) + _counting(files)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("x")
    (tmp_path / "clash" / "summary.json").mkdir(parents=True)
    vols = volumes(shape=(12, 10, 8))
    singular = np.eye(4)
    singular[:2, :2] = 1.0  # two equal axes: non-zero voxel sizes, no inverse
    cases = [
        (ok + ["--smooth", "nan"] + out, "--smooth: must be finite"),
        (ok + ["--smooth", "inf"] + out, "--smooth: must be finite"),
        (ok + ["--compactness", "inf"] + out, "--compactness: must be finite"),
        (ok + ["--compactness", "0"] + out, "--compactness: must be > 0"),
        (ok + ["--n-segments", str(2**40)] + out, "--n-segments: must be <="),
        (ok + ["--n-segments", "5000"] + out, "--n-segments: must be at most the case's 960 voxels"),
        (ok + ["--seed", "-1"] + out, "--seed: must be >= 0"),
        (ok + ["--device", "meta"] + out, "--device: must be cpu or cuda"),
        (ok + ["--device", "nonsense"] + out, "--device: must be cpu or cuda"),
        (ok + ["--target", "2"] + out, "--target: must be < 2 (the model's outputs), got 2"),
        (ok + ["--target", str(2**40)] + out, "--target: must be <="),
        (ok + ["--layer", "features.0.0"] + out, "--layer: only with LayerGradCam or GuidedGradCam"),
        (ok + ["--baseline", "nan"] + out, "--baseline: "),
        (ok + ["--n-samples", "0"] + out, "--n-samples: must be >= 1"),
        (ok + ["--method-kwargs", '{"n_samples": "ten"}'] + out, "--method-kwargs: 'n_samples' must be an int"),
        (ok + ["--method-kwargs", '{"n_samples": 0}'] + out, "--method-kwargs: 'n_samples' must be >= 1"),
        (ok + ["--method-kwargs", '{"n_samples": NaN}'] + out, "--method-kwargs: 'n_samples' must be finite"),
        (ok + ["--method-kwargs", '{"perturbations_per_eval": 1.5}'] + out, "'perturbations_per_eval' must be an int"),
        (ok + ["--method-kwargs", '{"antithetic": 1}'] + out, "'antithetic' must be true or false"),
        (ok + ["--method", "ig", "--method-kwargs", '{"return_convergence_delta": true}'] + out,
         "'return_convergence_delta' is not supported here"),
        (ok + ["--method", "ig", "--method-kwargs", '{"method": 3}'] + out, "'method' must be a str"),
        (ok + ["--method", "occlusion", "--method-kwargs", '{"sliding_window_shapes": [1, 2]}'] + out,
         "'sliding_window_shapes' must be 4 ints >= 1"),
        (ok + ["--method", "smoothgrad", "--method-kwargs", '{"stdevs": -1}'] + out, "'stdevs' must be >= 0"),
        (ok + ["--method", "lime", "--method-kwargs", '{"similarity_func": "cosine"}'] + out, "takes a Python object"),
        (["--modality", f"t 1={files['t1']}", f"t_1={files['t2']}"] + _counting(files) + out,
         "--modality: modality names ('t 1', 't_1') give clashing file names"),
        (["--modality", f"{'m' * 250}={files['t1']}", f"t2={files['t2']}"] + _counting(files) + out,
         "--modality: modality names must give file names of at most 255 bytes"),
        (["--ct", files["t1"], "--windows", "40:400", "40:nan"] + _counting(files) + out, "--windows: '40:nan'"),
        (["--ct", files["t1"], "--windows", "brain", "40:80"] + _counting(files) + out, "--windows: modality names must be unique"),
        (ok + ["--out", str(tmp_path / "mine")], "--out: "),
        (ok + ["--out", str(tmp_path / "clash")], "summary.json' is a folder"),
        (ok + ["--out", files["t1"]], "--out: "),
        (["--modality", f"t1={files['t1']}"] + _counting(files) + out, "--model: fails on this case's input of shape [1, 1, 12, 10, 8]"),
        (_case(files) + _factory(files, "TupleModel") + out, "--model: must return one tensor, got tuple"),
        (_case(files) + _factory(files, "SegmentationModel") + out, "--model: must return [1, classes]"),
        (_case(files) + _factory(files, "NaNModel") + out, "--model: returns non-finite values"),
        (["--modality", f"t1={save(tmp_path / 'nan.nii.gz', np.full((4, 4, 4), np.nan, np.float32))}"]
         + _counting(files) + out, "contains NaN"),
        (["--modality", f"t1={save(tmp_path / 'sing.nii.gz', vols['t1'], affine=singular)}"] + _counting(files) + out,
         "must be invertible"),
        (["--modality", f"t1={save(tmp_path / 'empty.nii.gz', np.zeros((4, 0, 4), np.float32))}"] + _counting(files)
         + out, "--modality: "),
        (ok + ["--smooth", "x"] + out, "argument --smooth: invalid float value"),
        (ok, "the following arguments are required: --out"),
    ]
    for argv, message in cases:
        _fails(argv, capsys, message)
        assert CountingVGG3D.calls <= 1, argv  # at most the one test run
        CountingVGG3D.calls = 0
    assert not (tmp_path / "never").exists()
    assert (tmp_path / "mine" / "notes.txt").read_text() == "x"


BAD_FLOATS = st.sampled_from(["nan", "inf", "-inf", "-1e-3", "-5", "1e400", "NaN"])


@st.composite
def bad_argument(draw):
    """(argv fragment, flag it must name)."""
    which = draw(st.sampled_from(["smooth", "compactness", "n-segments", "target", "seed", "n-samples", "slice",
                                  "device", "method-kwargs", "windows"]))
    if which in ("smooth", "compactness"):
        value = draw(BAD_FLOATS | st.just("0") if which == "compactness" else BAD_FLOATS)
        return [f"--{which}", value], f"--{which}"
    if which == "device":
        return ["--device", draw(st.sampled_from(["meta", "xla", "mps:0", "cuda:99", "cpu:x", "", "lazy"]))], "--device"
    if which == "method-kwargs":
        key = draw(st.sampled_from(["n_samples", "perturbations_per_eval", "show_progress", "antithetic"]))
        value = draw(st.sampled_from([-1, 0, 1.5, "x", None, [1], {"a": 1}, float("nan")]))
        if key in ("show_progress", "antithetic") and value in (0, 1.5) or value is None and key == "n_samples":
            value = "x"
        return ["--method-kwargs", json.dumps({key: value})], "--method-kwargs"
    if which == "windows":
        level = draw(st.sampled_from(["40", "nan", "inf", "x"]))
        width = draw(st.sampled_from(["0", "-1", "nan", "inf"]))
        return ["--windows", f"{level}:{width}"], "--windows"
    low = {"n-segments": 1, "n-samples": 1}.get(which, 0)
    value = draw(st.integers(max_value=low - 1) | st.integers(min_value=2**63, max_value=2**80))
    return [f"--{which}", str(value)], f"--{which}"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=bad_argument())
def test_drawn_bad_values_exit_2_with_one_line_naming_the_flag(files, tmp_path, capsys, no_work, bad):
    argv, flag = bad
    source = ["--ct", files["t1"]] if flag == "--windows" else _case(files)
    line = _fails(source + _counting(files) + argv + ["--out", str(tmp_path / "never")], capsys)
    assert flag in line, (argv, line)
    assert CountingVGG3D.calls == 0  # rejected before the model ran at all
    assert not (tmp_path / "never").exists()


def test_finite_checks_match_math_isfinite():
    from mmxai_fast.pipeline.cli_checks import number

    for value in (math.nan, math.inf, -math.inf):
        assert "finite" in number(value, "--x")
    assert number(1.0, "--x", low=0) is None and number(True, "--x") is not None
