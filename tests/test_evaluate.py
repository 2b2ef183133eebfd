"""`mmxai-fast evaluate` on a folder written by `mmxai-fast explain`, and evaluate_explanation."""
import json
import os

import numpy as np
import pytest
import torch

from mmxai_fast.cli import main
from mmxai_fast.models import VGG3D
from pipeline_data import save, write_case

KW = {"in_channels": 2, "widths": [4, 8], "hidden": 8}


@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("evaluate")
    paths, roi = write_case(tmp, shape=(12, 10, 8))
    torch.manual_seed(0)
    torch.save(VGG3D(**KW).eval().state_dict(), tmp / "w.pt")
    model_args = ["--state-dict", str(tmp / "w.pt"), "--factory", "mmxai_fast.models:VGG3D",
                  "--factory-kwargs", json.dumps(KW)]
    case_args = ["--modality", f"t1={paths['t1']}", f"t2={paths['t2']}", "--normalize", "zscore"]
    out = tmp / "explanation"
    assert main(["explain", *case_args, "--roi", roi, *model_args, "--method", "FeatureAblation",
                 "--n-segments", "6", "--out", str(out), "--no-progress"]) == 0
    return {"tmp": tmp, "out": out, "roi": roi, "args": case_args + model_args}


def test_evaluate_writes_metrics_and_figure(explained, capsys):
    out = explained["out"]
    before = set(os.listdir(out))
    assert main(["evaluate", str(out), *explained["args"], "--roi", explained["roi"], "--steps", "5",
                 "--n-random", "3"]) == 0
    assert set(os.listdir(out)) == before | {"evaluation.json", "curves.png"}
    metrics = json.loads((out / "evaluation.json").read_text())
    assert 0 <= metrics["msfi"] <= 1 and 0 <= metrics["localisation"] <= 1
    assert -1 <= metrics["modality_tau_b"] <= 1 and set(metrics["modality_shapley"]) == {"t1", "t2"}
    assert len(metrics["deletion"]["curve"]) == 6 and metrics["fractions"][0] == 0 and metrics["fractions"][-1] == 1
    # deletion starts at the full input and ends at the baseline; insertion the other way round
    d, i = metrics["deletion"]["curve"], metrics["insertion"]["curve"]
    assert d[0] == pytest.approx(i[-1], abs=1e-5) and d[-1] == pytest.approx(i[0], abs=1e-5)
    # the modality Shapley values are efficient: they sum to f(all) - f(none)
    assert sum(metrics["modality_shapley"].values()) == pytest.approx(d[0] - d[-1], abs=1e-4)
    assert metrics["delta_aupc"]["deletion"] == pytest.approx(
        metrics["deletion"]["random_area"] - metrics["deletion"]["area"])
    assert "MSFI" in capsys.readouterr().out


@pytest.mark.parametrize("problem,match", [("missing", "--roi: required"), ("empty", "--roi: the mask"),
                                           ("nofile", "--roi: file"), ("notexplained", "DIR: ")])
def test_roi_and_folder_errors_exit_2_with_one_line(explained, tmp_path, capsys, problem, match):
    roi = explained["roi"]
    folder = str(explained["out"])
    if problem == "empty":
        roi = save(tmp_path / "empty.nii.gz", np.zeros((12, 10, 8), dtype=np.uint8))
    if problem == "nofile":
        roi = str(tmp_path / "nope.nii.gz")
    if problem == "notexplained":
        folder = str(tmp_path)
    argv = ["evaluate", folder, *explained["args"], "--out", str(tmp_path / "o")]
    if problem != "missing":
        argv += ["--roi", roi]
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert match in err[-1]
    assert not (tmp_path / "o").exists()


def test_evaluate_explanation_function_rejects_missing_roi():
    from mmxai_fast.metrics import evaluate_explanation
    from mmxai_fast.pipeline import Case

    case = Case(image=torch.rand(2, 4, 4, 4), modalities=("a", "b"), affine=np.eye(4))
    with pytest.raises(ValueError, match="roi must be given"):
        evaluate_explanation(torch.nn.Identity(), case, torch.zeros(2, 4, 4, 4))
    case.roi = torch.zeros(4, 4, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match="roi must contain"):
        evaluate_explanation(torch.nn.Identity(), case, torch.zeros(2, 4, 4, 4))
