import json
import os
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch

import mmxai_fast
from mmxai_fast.cli import main
from mmxai_fast.models import VGG3D
from pipeline_data import AFFINE, ANATOMICAL, save, volumes, write_case

KW = {"in_channels": 2, "widths": [4, 8], "hidden": 8}
OUTPUTS = {"importance.json", "summary.json", "heatmaps.png", "importance.png", "viewer.html"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    paths, roi = write_case(tmp, shape=(12, 10, 8))
    torch.manual_seed(0)
    model = VGG3D(**KW).eval()
    torch.save(model.state_dict(), tmp / "w.pt")
    torch.jit.save(torch.jit.script(model), tmp / "ts.pt")
    return {"tmp": tmp, **paths, "roi": roi, "w": str(tmp / "w.pt"), "ts": str(tmp / "ts.pt")}


def _state_dict_args(files):
    return ["--state-dict", files["w"], "--factory", "mmxai_fast.models:VGG3D", "--factory-kwargs", json.dumps(KW)]


def test_end_to_end_small_case(files, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["explain", "--modality", f"t1={files['t1']}", f"t2={files['t2']}", "--roi", files["roi"],
               *_state_dict_args(files), "--method", "shapley", "--n-samples", "2", "--n-segments", "4",
               "--normalize", "zscore", "--baseline", "gaussian", "--smooth", "0.7", "--out", str(out),
               "--no-progress"])
    assert rc == 0
    assert set(os.listdir(out)) == OUTPUTS | {"t1_heatmap.nii.gz", "t2_heatmap.nii.gz"}
    printed = capsys.readouterr().out
    for line in ("method             ShapleyValueSampling", "model evaluations", "wall time", "time in model",
                 "modality importance  t1 "):
        assert line in printed
    summary = json.loads((out / "summary.json").read_text())
    assert summary["settings"]["baseline"] == "gaussian (seed 0)" and summary["settings"]["method_kwargs"]["n_samples"] == 2
    roi = np.asarray(nib.load(files["roi"]).dataobj) > 0
    assert summary["slice"] == int(roi.reshape(-1, roi.shape[-1]).sum(0).argmax())
    assert summary["model_evaluations"] >= 2 and summary["smooth_sigma"] == 0.7
    np.testing.assert_allclose(nib.load(str(out / "t2_heatmap.nii.gz")).affine, AFFINE)


def test_end_to_end_real_t1_twice(files, tmp_path, capsys):
    out = tmp_path / "t1"
    rc = main(["explain", "--modality", f"t1={ANATOMICAL}", f"t1copy={ANATOMICAL}", "--model", files["ts"],
               "--method", "FeatureAblation", "--n-segments", "8", "--normalize", "zscore", "--slice", "12",
               "--out", str(out), "--no-progress"])
    assert rc == 0
    ref = nib.load(ANATOMICAL)
    for name in ("t1", "t1copy"):
        img = nib.load(str(out / f"{name}_heatmap.nii.gz"))
        np.testing.assert_allclose(img.affine, ref.affine)
        assert img.shape == ref.shape and np.abs(np.asarray(img.dataobj)).max() > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["slice"] == 12 and summary["shape"] == list(ref.shape)
    assert sum(json.loads((out / "importance.json").read_text()).values()) == pytest.approx(1)


def test_4d_image_with_gradcam_layer(files, tmp_path):
    vols = volumes(shape=(12, 10, 8))
    four = save(tmp_path / "four.nii.gz", np.stack([vols["t1"], vols["t2"]], axis=-1))
    out = tmp_path / "out"
    assert main(["explain", "--image", four, "--names", "flair", "t1ce", *_state_dict_args(files),
                 "--method", "gradcam", "--layer", "features.0.0", "--target", "1", "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["target"] == 1 and summary["settings"]["layer"] == "features.0.0"
    assert {"flair_heatmap.nii.gz", "t1ce_heatmap.nii.gz"} <= set(os.listdir(out))


def test_ct_windows(files, tmp_path):
    hu = np.full((12, 10, 8), -1000, np.int16)
    hu[2:10, 2:8, 1:7] = 40
    ct = save(tmp_path / "ct.nii.gz", hu)
    out = tmp_path / "out"
    assert main(["explain", "--ct", ct, "--windows", "brain", "40:400", "--model", files["ts"], "--method",
                 "saliency", "--out", str(out)]) == 0
    assert {"brain_heatmap.nii.gz", "L40W400_heatmap.nii.gz"} <= set(os.listdir(out))


def test_failure_mid_run_leaves_no_file(files, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(RuntimeError, match="model failed mid-run"):
        main(["explain", "--modality", f"t1={files['t1']}", f"t2={files['t2']}", "--state-dict", files["w"],
              "--factory", "pipeline_data:ExplodingVGG3D", "--factory-kwargs", json.dumps(KW),
              "--method", "FeatureAblation", "--n-segments", "4", "--method-kwargs", '{"perturbations_per_eval": 1}',
              "--out", str(out), "--no-progress"])
    assert not out.exists() or os.listdir(out) == []


def _bad(files, tmp):
    ok_case = ["--modality", f"t1={files['t1']}", f"t2={files['t2']}"]
    ok_model = ["--model", files["ts"]]
    out = ["--out", str(tmp / "never")]
    mismatched = save(tmp / "small.nii.gz", np.ones((12, 10, 7), np.float32))
    moved = AFFINE.copy()
    moved[1, 3] += 2
    shifted = save(tmp / "shifted.nii.gz", volumes(shape=(12, 10, 8))["t2"], affine=moved)
    not_a_file = tmp / "folder"
    not_a_file.mkdir(exist_ok=True)
    (tmp / "plain").write_text("x")
    return [
        (["--modality", "t1"] + ok_model + out, "--modality: expected NAME=PATH"),
        (["--modality", f"t1={files['t1']}", f"t1={files['t2']}"] + ok_model + out, "--modality: modality 't1' given twice"),
        (["--modality", f"t1={tmp / 'none.nii.gz'}"] + ok_model + out, "--modality t1: file"),
        (["--modality", f"t1={files['t1']}", f"t2={mismatched}"] + ok_model + out, "--modality: modality 't2': "),
        (["--modality", f"t1={files['t1']}", f"t2={shifted}"] + ok_model + out, "different affine"),
        (ok_case + ["--roi", mismatched] + ok_model + out, "--roi: roi: "),
        (ok_case + ["--model", files["w"]] + out, "--model: "),
        (ok_case + ["--state-dict", files["w"]] + out, "--factory: required with --state-dict"),
        (ok_case + ok_model + ["--factory", "x:y"] + out, "--factory/--factory-kwargs: only with --state-dict"),
        (ok_case + ["--state-dict", files["w"], "--factory", "mmxai_fast.models:VGG3D", "--factory-kwargs", "{"] + out,
         "--factory-kwargs: not valid JSON"),
        (ok_case + ["--state-dict", files["w"], "--factory", "nope:make"] + out, "--factory: cannot import"),
        (ok_case + ok_model + ["--method", "magic"] + out, "--method: method must be one of"),
        (ok_case + ok_model + ["--method", "gradcam", "--layer", "x"] + out, "--model: method LayerGradCam needs module hooks"),
        (ok_case + _state_dict_args(files) + ["--method", "gradcam", "--layer", "x"] + out, "--layer: layer 'x'"),
        (ok_case + ok_model + ["--baseline", "noise"] + out, "--baseline: "),
        (ok_case + ok_model + ["--method", "saliency", "--n-samples", "3"] + out, "--n-samples: method Saliency takes no"),
        (ok_case + ok_model + ["--n-samples", "0"] + out, "--n-samples: must be >= 1"),
        (ok_case + ok_model + ["--n-segments", "0"] + out, "--n-segments: must be >= 1"),
        (ok_case + ok_model + ["--target", "-2"] + out, "--target: must be >= 0"),
        (ok_case + ok_model + ["--slice", "8"] + out, r"--slice: must be in [0, 8)"),
        (ok_case + ok_model + ["--smooth", "-1"] + out, "--smooth: must be >= 0"),
        (ok_case + ok_model + ["--method-kwargs", "[1]"] + out, "--method-kwargs: must be a JSON object"),
        (ok_case + ok_model + ["--method", "ig", "--method-kwargs", '{"n_stepz": 3}'] + out,
         "--method-kwargs: method_kwargs: IntegratedGradients takes no argument 'n_stepz'"),
        (ok_case + ok_model + ["--method-kwargs", '{"target": 1}'] + out, "'target' is set by explain() itself"),
        (ok_case + ok_model + ["--names", "a"] + out, "--names: only with --image"),
        (ok_case + ok_model + ["--windows", "brain"] + out, "--windows: only with --ct"),
        (["--ct", files["t1"], "--normalize", "zscore"] + ok_model + out, "--normalize: not with --ct"),
        (["--ct", files["t1"], "--windows", "lungs"] + ok_model + out, "--windows: 'lungs' is neither a preset"),
        (ok_case + ok_model + ["--out", str(tmp / "plain")], "--out: "),
        (ok_case + ok_model + ["--device", "cuda:0"] + out, "--device: ") if not torch.cuda.is_available() else
        (ok_case + ok_model + ["--device", "gpu"] + out, "--device: "),
    ]


def test_every_bad_argument_exits_2_with_one_line(files, tmp_path, capsys):
    for args, message in _bad(files, tmp_path):
        with pytest.raises(SystemExit) as info:
            main(["explain"] + args)
        err = capsys.readouterr().err.strip().splitlines()
        assert info.value.code == 2, args
        assert len(err) == 1, err  # one line, no usage block
        assert err[-1].startswith("mmxai-fast explain: error: "), err
        assert message in err[-1], (message, err[-1])
        assert not (tmp_path / "never").exists()


def test_other_subcommands_still_work(capsys):
    assert main(["backends"]) == 0
    assert "reference" in capsys.readouterr().out


def test_console_entry_point(files, tmp_path):
    out = tmp_path / "out"
    root = os.path.dirname(os.path.dirname(mmxai_fast.__file__))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "mmxai_fast", "explain", "--modality", f"t1={files['t1']}",
                           f"t2={files['t2']}", "--model", files["ts"], "--method", "InputXGradient", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "time in model" in proc.stdout and (out / "t1_heatmap.nii.gz").exists()
