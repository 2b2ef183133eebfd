import json
import os

import nibabel as nib
import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Case, Explanation, RunStats, modality_importance, write_explanation
from mmxai_fast.pipeline import outputs
from pipeline_data import AFFINE

NAMES = {"t1_heatmap.nii.gz", "t2_heatmap.nii.gz", "importance.json", "summary.json", "heatmaps.png",
         "importance.png", "viewer.html"}


def _case_and_explanation(names=("t1", "t2")):
    g = torch.Generator().manual_seed(0)
    roi = torch.zeros(8, 7, 6, dtype=torch.bool)
    roi[2:4, 2:4, 3] = True
    case = Case(torch.rand(len(names), 8, 7, 6, generator=g), names, AFFINE, roi=roi, sources=("a.nii",) * len(names))
    attr = torch.randn(len(names), 8, 7, 6, generator=g)
    exp = Explanation(attributions=attr, method="Occlusion", target=0, feature_mask=None,
                      modality_importance=modality_importance(attr, names), stats=RunStats("Occlusion", 7, 2.0, 1.5, 70),
                      modalities=names, settings={"baseline": "zeros"})
    return case, exp


def test_writes_every_file_with_the_input_affine(tmp_path):
    case, exp = _case_and_explanation()
    written = write_explanation(case, exp, tmp_path / "out", smooth_sigma=0.5)
    assert set(written) == NAMES and set(os.listdir(tmp_path / "out")) == NAMES
    for m, name in enumerate(case.modalities):
        img = nib.load(str(written[f"{name}_heatmap.nii.gz"]))
        np.testing.assert_allclose(img.affine, AFFINE)
        assert int(img.header["sform_code"]) == 1 and int(img.header["qform_code"]) == 1
        np.testing.assert_array_equal(np.asarray(img.dataobj), exp.attributions[m].numpy())
    importance = json.loads(written["importance.json"].read_text())
    assert importance == pytest.approx(exp.modality_importance) and sum(importance.values()) == pytest.approx(1)
    summary = json.loads(written["summary.json"].read_text())
    assert summary["method"] == "Occlusion" and summary["model_evaluations"] == 7
    assert summary["model_share"] == pytest.approx(0.75) and summary["slice"] == 3  # the ROI's slice
    for png in ("heatmaps.png", "importance.png"):
        assert written[png].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unsafe_modality_names_are_sanitised(tmp_path):
    case, exp = _case_and_explanation(names=("T1 ce/x", "flair"))
    written = write_explanation(case, exp, tmp_path)
    assert "T1_ce_x_heatmap.nii.gz" in written


def test_invalid_input_writes_nothing(tmp_path):
    case, exp = _case_and_explanation()
    exp.attributions = exp.attributions[:, :-1]
    with pytest.raises(ValueError, match="must have the case's shape"):
        write_explanation(case, exp, tmp_path / "out")
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")
    case, exp = _case_and_explanation()
    with pytest.raises(ValueError, match="slice must be"):
        write_explanation(case, exp, tmp_path / "out", slice=99)
    assert not (tmp_path / "out").exists() or not os.listdir(tmp_path / "out")


def test_failure_while_rendering_leaves_no_file_and_keeps_old_outputs(tmp_path, monkeypatch):
    case, exp = _case_and_explanation()
    out = tmp_path / "out"
    out.mkdir()
    (out / "importance.json").write_text("old")
    calls = []

    def failing_png(fig):
        calls.append(fig)
        if len(calls) == 2:
            raise RuntimeError("disk on fire")
        return b"png"

    monkeypatch.setattr(outputs, "_png_bytes", failing_png)
    with pytest.raises(RuntimeError, match="disk on fire"):
        write_explanation(case, exp, out)
    assert os.listdir(out) == ["importance.json"] and (out / "importance.json").read_text() == "old"


def test_failure_while_writing_removes_temporary_files(tmp_path, monkeypatch):
    case, exp = _case_and_explanation()
    out = tmp_path / "out"
    real_fsync, calls = os.fsync, []

    def failing_fsync(fd):
        calls.append(fd)
        if len(calls) == 3:  # the third file: two temporaries already written
            raise OSError("no space left on device")
        real_fsync(fd)

    monkeypatch.setattr(outputs.os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="no space left"):
        write_explanation(case, exp, out)
    assert len(calls) == 3
    assert os.listdir(tmp_path) == []  # neither the folder nor its staging copy


def test_write_files_atomically_replaces_existing_files(tmp_path):
    (tmp_path / "a.json").write_text("old")
    paths = outputs.write_files_atomically(tmp_path, {"a.json": b"new", "b.bin": b"\x00"})
    assert (tmp_path / "a.json").read_text() == "new" and paths["b.bin"].read_bytes() == b"\x00"
    assert sorted(os.listdir(tmp_path)) == ["a.json", "b.bin"]


def test_an_older_output_set_is_replaced_as_a_whole(tmp_path):
    out = tmp_path / "out"
    write_explanation(*_case_and_explanation(("t1", "t2", "flair")), out)
    assert "flair_heatmap.nii.gz" in os.listdir(out)
    write_explanation(*_case_and_explanation(), out)
    assert set(os.listdir(out)) == NAMES and os.listdir(tmp_path) == ["out"]


@pytest.mark.parametrize("make, message", [
    (lambda out: (out / "summary.json").mkdir(parents=True), "summary.json' is a folder"),
    (lambda out: out.mkdir() or (out / "notes.txt").write_text("mine"), "holds 'notes.txt', which is not an output"),
    (lambda out: out.write_text("a file"), "exists and is not a folder"),
])
def test_refuses_folders_it_would_destroy(tmp_path, make, message):
    out = tmp_path / "out"
    make(out)
    before = sorted(os.walk(tmp_path))
    with pytest.raises(outputs.OutputError, match=message):
        write_explanation(*_case_and_explanation(), out)
    assert sorted(os.walk(tmp_path)) == before


def test_leftovers_of_a_killed_run_are_removed_and_a_lost_old_set_restored(tmp_path):
    out = tmp_path / "out"
    dead = 2**22 + 12345  # above the default pid_max: no such process
    stale = tmp_path / f".out.{dead}.abc_1.mmxai-staging"
    stale.mkdir()
    (stale / "summary.json").write_text("half")
    old = tmp_path / f".out.{dead}.xyz.mmxai-old"
    old.mkdir()
    (old / "summary.json").write_text("old")
    outputs._clean_leftovers(out)  # out is missing: the old set was moved away, comes back
    assert sorted(os.listdir(tmp_path)) == ["out"] and (out / "summary.json").read_text() == "old"
    stale.mkdir()
    write_explanation(*_case_and_explanation(), out)
    assert os.listdir(tmp_path) == ["out"] and set(os.listdir(out)) == NAMES


def test_bad_file_names_and_values_are_refused_before_writing(tmp_path):
    for name in ("", "..", "a/b", "x" * 256):
        with pytest.raises(outputs.OutputError, match="plain names"):
            outputs.publish_output_set(tmp_path / "o", {name: b""})
    case, exp = _case_and_explanation()
    for sigma in (float("nan"), float("inf"), -1.0, "1"):
        with pytest.raises(ValueError, match="smooth_sigma must be"):
            write_explanation(case, exp, tmp_path / "o", smooth_sigma=sigma)
    exp.attributions[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="attributions must be finite"):
        write_explanation(case, exp, tmp_path / "o")
    case, exp = _case_and_explanation(names=("a" * 250, "b"))
    with pytest.raises(outputs.OutputError, match="at most 255 bytes"):
        write_explanation(case, exp, tmp_path / "o")
    assert os.listdir(tmp_path) == []
