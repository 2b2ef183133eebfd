"""mmxai-fast explain --metrics, and explain()'s registry extras (stderr, target checks, slow-path warning)."""
import json
import os
import warnings

import numpy as np
import pytest
import torch

from mmxai_fast.cli import main
from mmxai_fast.pipeline import Superpixels, explain, load_case
from mmxai_fast.pipeline import methods as methods_module
from mmxai_fast.pipeline.methods import METHODS, RUNNERS
from pipeline_data import save, small_model, write_case

OUTPUTS = {"importance.json", "summary.json", "heatmaps.png", "importance.png", "viewer.html",
           "t1_heatmap.nii.gz", "t2_heatmap.nii.gz"}


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("metrics")
    paths, roi = write_case(tmp, shape=(12, 10, 8))
    model = small_model().eval()
    torch.jit.save(torch.jit.script(model), tmp / "ts.pt")
    empty = save(tmp / "empty_roi.nii.gz", np.zeros((12, 10, 8), np.float32))
    return {**paths, "roi": roi, "empty": str(empty), "ts": str(tmp / "ts.pt"), "model": model}


def _args(files, out, *extra):
    return ["explain", "--modality", f"t1={files['t1']}", f"t2={files['t2']}", "--model", files["ts"],
            "--method", "FeatureAblation", "--n-segments", "4", "--out", str(out), "--no-progress", *extra]


def test_metrics_written_with_the_explanation(files, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(_args(files, out, "--roi", files["roi"], "--metrics")) == 0
    assert set(os.listdir(out)) == OUTPUTS | {"evaluation.json", "curves.png"}
    evaluation = json.loads((out / "evaluation.json").read_text())
    summary = json.loads((out / "summary.json").read_text())
    assert evaluation["method"] == "FeatureAblation" and evaluation["target"] == summary["target"]
    assert 0 <= evaluation["localisation"] <= 1 and "deletion" in evaluation and "msfi" in evaluation
    assert "MSFI " in capsys.readouterr().out
    # the same folder again, with and without --metrics (the old set is replaced as a whole)
    assert main(_args(files, out, "--roi", files["roi"], "--metrics")) == 0
    assert main(_args(files, out, "--roi", files["roi"])) == 0
    assert set(os.listdir(out)) == OUTPUTS


@pytest.mark.parametrize("roi, message", [(None, "--metrics: needs --roi"), ("empty", "--roi: the mask")])
def test_metrics_without_a_region_exits_2_before_any_work(files, tmp_path, capsys, roi, message):
    out = tmp_path / "never"
    extra = ["--metrics"] + ([] if roi is None else ["--roi", files[roi]])
    with pytest.raises(SystemExit) as info:
        main(_args(files, out, *extra))
    err = capsys.readouterr().err.strip().splitlines()
    assert info.value.code == 2 and len(err) == 1 and message in err[0], err
    assert not out.exists()


@pytest.fixture(scope="module")
def case(files):
    return load_case({"t1": files["t1"], "t2": files["t2"]}, roi=files["roi"], normalize="zscore")


def test_registry_covers_every_method():
    assert set(RUNNERS) == set(METHODS) and len(METHODS) == 16
    assert {n for n, r in RUNNERS.items() if r.uses_superpixels} == {
        "FeatureAblation", "FeaturePermutation", "Lime", "ShapleyValueSampling", "KernelShap"}


def test_shapley_stderr_on_the_explanation(files, case):
    exp = explain(files["model"], case, "shapley", superpixels=Superpixels(n_segments=4),
                  method_kwargs={"n_samples": 3}, show_progress=False)
    assert exp.stderr is not None and exp.stderr.shape == exp.attributions.shape
    assert bool((exp.stderr[:, ~case.foreground] == 0).all()) and float(exp.stderr.max()) > 0
    assert exp.settings["stderr"]["max"] == pytest.approx(float(exp.stderr.max()))
    ablation = explain(files["model"], case, "FeatureAblation", superpixels=Superpixels(n_segments=4),
                       show_progress=False)
    assert ablation.stderr is None and "stderr" not in ablation.settings


def test_target_out_of_range_and_tuple_output(files, case):
    calls = []

    class Tuple(torch.nn.Module):
        def forward(self, x):
            calls.append(1)
            return files["model"](x), x.sum()

    with pytest.raises(ValueError, match=r"target must be a class index in \[0, 2\).*got 5"):
        explain(files["model"], case, "Saliency", target=5, show_progress=False)
    with pytest.raises(ValueError, match="model must return one tensor"):
        explain(Tuple(), case, "FeatureAblation", target=0, superpixels=Superpixels(n_segments=4),
                show_progress=False)
    assert len(calls) == 1  # one forward, before the method


def test_custom_perturb_func_warns_once(files, case, monkeypatch):
    from captum.attr._core.lime import default_perturb_func

    def perturb(original_inp, **kwargs):
        return default_perturb_func(original_inp, **kwargs)

    monkeypatch.setattr(methods_module, "_warned_slow_path", set())
    run = dict(superpixels=Superpixels(n_segments=4), show_progress=False,
               method_kwargs={"n_samples": 4, "perturb_func": perturb})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        explain(files["model"], case, "Lime", **run)
        explain(files["model"], case, "Lime", **run)
        explain(files["model"], case, "Lime", superpixels=Superpixels(n_segments=4), show_progress=False,
                method_kwargs={"n_samples": 4})
    slow = [w for w in caught if "Captum's own" in str(w.message)]
    assert len(slow) == 1 and "perturb_func" in str(slow[0].message)
