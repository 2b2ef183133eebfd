"""viewer.html and the cohort index without a browser: what the page carries (exact round trip
of the packed volumes, the figures' colour scale, the in-plane cap), input checks before any
file is written, the templates shipping as package data, and write_explanation's viewer."""
import base64
import json
import os
import re
import zlib
from importlib import resources

import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Case, Explanation, RunStats, modality_importance, write_explanation
from mmxai_fast.pipeline.viewer import MAX_SIZE, render_viewer, template_text, viewer_thumbnail, write_viewer
from mmxai_fast.pipeline.viewer_cohort import cohort_index_html, write_cohort_index
from pipeline_data import AFFINE

PNG = b"\x89PNG\r\n\x1a\n"


def make_case(shape=(20, 16, 12), names=("t1", "flair"), seed=0):
    g = torch.Generator().manual_seed(seed)
    image = torch.rand(len(names), *shape, generator=g) * 100
    roi = torch.zeros(shape, dtype=torch.bool)
    roi[4:9, 5:10, 6:9] = True
    return Case(image, names, AFFINE, roi=roi, sources=("case1_t1.nii.gz",) * len(names))


def make_explanation(case, method="Occlusion", seed=1, stderr=None):
    g = torch.Generator().manual_seed(seed)
    attr = torch.randn(case.image.shape, generator=g)
    exp = Explanation(attr, method, 1, None, modality_importance(attr, case.modalities),
                      RunStats(method, 9, 2.0, 1.5, 40), case.modalities, {"baseline": "zeros"})
    if stderr is not None:
        exp.stderr = stderr
    return exp


def parse(page: bytes):
    """(meta, [blob bytes]) of a rendered page, decoded as the page's script does."""
    text = page.decode()
    meta = json.loads(re.search(r'<script type="application/json" id="mmxai-meta">(.*?)</script>', text, re.S)[1])
    blobs = dict(re.findall(r'<script type="application/octet-stream" id="mmxai-blob-(\d+)">(.*?)</script>', text))
    return meta, [base64.b64decode(blobs[str(i)]) for i in range(len(blobs))]


def unpack(blob: bytes, dims, signed: bool) -> np.ndarray:
    """Packed blob -> [X, Y, Z] array (inflate, cumulative sum mod 256 along X, transpose)."""
    X, Y, Z = dims
    delta = np.frombuffer(zlib.decompress(blob), np.uint8).reshape(Z, Y, X)
    raw = np.cumsum(delta, axis=-1, dtype=np.uint64).astype(np.uint8)
    return (raw.view(np.int8) if signed else raw).transpose(2, 1, 0)


def test_round_trip_is_exact_quantisation():
    case = make_case()
    exps = [make_explanation(case, "Occlusion", 1), make_explanation(case, "Saliency", 2)]
    meta, blobs = parse(render_viewer(case, exps))
    assert meta["dims"] == [20, 16, 12] and meta["factors"] == [1, 1, 1]
    assert [r["label"] for r in meta["rows"]] == ["Occlusion", "Saliency"]
    for m in range(2):
        lo, hi = meta["windows"][m]
        image = case.image[m].numpy()
        expected = np.clip(np.round((image - lo) * (255 / (hi - lo))), 0, 255)
        got = unpack(blobs[meta["images"][m]], meta["dims"], signed=False).astype(float)
        assert np.abs(got - expected).max() <= 1  # float32 vs float64 rounding at .5
    for row, exp in zip(meta["rows"], exps):
        attr = exp.attributions.numpy()
        for m, blob_id in enumerate(row["heat"]):
            heat = unpack(blobs[blob_id], meta["dims"], signed=True).astype(float) / 127
            np.testing.assert_allclose(heat, attr[m] / np.abs(attr).max(), atol=0.5 / 127 + 1e-6)
        assert row["peak"] == pytest.approx(float(np.abs(attr).max()))
        assert row["stats"]["model_evaluations"] == 9 and row["importance"] == pytest.approx(exp.modality_importance)
    roi = unpack(blobs[meta["roi"]], meta["dims"], signed=False)
    np.testing.assert_array_equal(roi, case.roi.numpy())
    # first shown slices: largest ROI area along each axis (the ROI block spans 4:9, 5:10, 6:9)
    assert meta["initial"] == [4, 5, 6]


def test_colour_scale_is_the_figures_bwr():
    from matplotlib import colormaps

    case = make_case()
    meta, _ = parse(render_viewer(case, make_explanation(case)))
    lut = np.asarray(meta["lut"])
    assert lut.shape == (255, 3)
    for code in (-127, -64, 0, 64, 127):
        np.testing.assert_allclose(lut[code + 127] / 255, colormaps["bwr"]((code / 127 + 1) / 2)[:3], atol=0.5 / 255)
    assert lut[0].tolist() == [0, 0, 255] and lut[254].tolist() == [255, 0, 0] and lut[127].min() >= 254  # ~white


def test_axes_above_the_cap_are_reduced_by_block_means():
    case = make_case(shape=(70, 33, 20))
    exp = make_explanation(case)
    meta, blobs = parse(render_viewer(case, exp, max_size=32))
    assert meta["factors"] == [3, 2, 1] and meta["dims"] == [24, 17, 20] and meta["shape"] == [70, 33, 20]
    assert meta["spacing"] == pytest.approx([4.5, 3.0, 2.0])
    heat = unpack(blobs[meta["rows"][0]["heat"][0]], meta["dims"], signed=True) / 127
    scaled = exp.attributions[0].numpy() / exp.attributions.abs().max().item()
    np.testing.assert_allclose(heat[1, 2, 3], scaled[3:6, 4:6, 3].mean(), atol=0.5 / 127 + 1e-6)
    roi = unpack(blobs[meta["roi"]], meta["dims"], signed=False)
    assert roi[1:3, 2:5, 6:9].all() and roi.sum() == 2 * 3 * 3  # a block counts when any voxel is in the ROI
    assert MAX_SIZE == 256


@pytest.mark.parametrize("bad, message", [
    (lambda c, e: setattr(e, "attributions", e.attributions[:, :-1]), r"explanations\[1\] \(Saliency\)\.attributions must have the case's shape \(2, 20, 16, 12\), got \(2, 19, 16, 12\)"),
    (lambda c, e: e.attributions.__setitem__((0, 1, 1, 1), float("nan")), r"explanations\[1\] \(Saliency\)\.attributions must be finite, got 1 NaN and 0 infinite"),
    (lambda c, e: e.attributions.__setitem__((1, 2, 2, 2), float("inf")), r"must be finite, got 0 NaN and 1 infinite"),
    (lambda c, e: c.image.__setitem__((0, 0, 0, 0), float("nan")), r"case\.image must be finite"),
    (lambda c, e: setattr(e, "modalities", ("t1", "t2")), r"modalities must be the case's \('t1', 'flair'\), got \('t1', 't2'\)"),
])
def test_bad_inputs_are_refused_before_anything_is_written(tmp_path, bad, message):
    case = make_case()
    good, exp = make_explanation(case), make_explanation(case, "Saliency")
    bad(case, exp)
    out = tmp_path / "out"
    with pytest.raises(ValueError, match=message):
        write_viewer(case, [good, exp], out)
    assert not out.exists() or not os.listdir(out)


def test_other_bad_arguments():
    case = make_case()
    exp = make_explanation(case)
    with pytest.raises(ValueError, match="max_size must be an int >= 16, got 8"):
        render_viewer(case, exp, max_size=8)
    with pytest.raises(ValueError, match="smooth_sigma must be >= 0, got -1"):
        render_viewer(case, exp, smooth_sigma=-1)
    with pytest.raises(ValueError, match="at least one explanation"):
        render_viewer(case, [])
    with pytest.raises(TypeError, match="case must be a Case"):
        render_viewer(case.image, exp)
    with pytest.raises(TypeError, match=r"explanations\[0\] \(x\) must be an Explanation"):
        render_viewer(case, {"x": 3})


def test_write_explanation_writes_the_viewer_and_refuses_nan(tmp_path):
    case = make_case()
    exp = make_explanation(case)
    written = write_explanation(case, exp, tmp_path / "ok", smooth_sigma=1.0)
    meta, _ = parse(written["viewer.html"].read_bytes())
    assert meta["rows"][0]["method"] == "Occlusion" and meta["smooth_sigma"] == 1.0
    exp.attributions[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="must be finite"):
        write_explanation(case, exp, tmp_path / "nan")
    assert not (tmp_path / "nan").exists() or not os.listdir(tmp_path / "nan")


def test_page_is_self_contained_and_escapes_names():
    case = make_case(names=("t1</script><script>alert(1)</script>", "flair"))
    exp = make_explanation(case)
    exp.settings = {"note": "<b>&", "odd": float("nan"), "array": np.arange(2), "obj": object}
    page = render_viewer(case, {"Occ <i>": exp}).decode()
    assert "alert(1)</script>" not in page and "<b>" not in page
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)  # nothing fetched from anywhere
    assert "@import" not in page and "url(" not in page
    meta, _ = parse(page.encode())
    assert meta["modalities"][0].startswith("t1</script>") and meta["rows"][0]["label"] == "Occ <i>"
    settings = meta["rows"][0]["settings"]
    assert settings["odd"] is None and settings["array"] == [0, 1] and settings["obj"] == str(object)


def test_several_methods_same_name_and_stderr_summary():
    case = make_case()
    stderr = torch.full(case.image.shape, 0.01)
    exps = [make_explanation(case, "ShapleyValueSampling", 1, stderr=stderr),
            make_explanation(case, "ShapleyValueSampling", 2)]
    meta, blobs = parse(render_viewer(case, exps))
    assert [r["label"] for r in meta["rows"]] == ["ShapleyValueSampling", "ShapleyValueSampling (2)"]
    assert meta["rows"][0]["stderr"]["max"] == pytest.approx(0.01) and meta["rows"][1]["stderr"] is None
    assert len(blobs) == 2 + 2 * 2 + 1


def test_2d_case_and_no_roi():
    case = Case(torch.rand(2, 20, 18), ("a", "b"), AFFINE)
    meta, blobs = parse(render_viewer(case, make_explanation(case)))
    assert meta["dims"] == [20, 18, 1] and meta["roi"] is None and len(blobs) == 4


def test_templates_ship_with_the_installed_package():
    folder = resources.files("mmxai_fast.pipeline")
    assert "__MMXAI_TITLE__" in folder.joinpath("viewer_head.html").read_text(encoding="utf-8")  # the shared head
    for name in ("viewer_template.html", "viewer_index_template.html"):
        text = folder.joinpath(name).read_text(encoding="utf-8")
        assert "<!--MMXAI_PAYLOAD-->" in text and "<!--MMXAI_HEAD-->" in text
        assert template_text(name).startswith("<!DOCTYPE html>") and "__MMXAI_TITLE__" in template_text(name)
        assert "<!--MMXAI_SCRIPT_HEAD-->" in text and "<!--MMXAI_SCRIPT_HEAD-->" not in template_text(name)


def test_thumbnail_and_cohort_index(tmp_path):
    case = make_case()
    png = viewer_thumbnail(case, make_explanation(case), size=48)
    assert png.startswith(PNG)
    cases = [{"name": "b", "viewer_relpath": "b/viewer.html", "thumbnail": png, "summary": {"p": 0.2, "n": 3}},
             {"name": "a", "viewer_relpath": "a dir/viewer.html", "thumbnail": np.zeros((8, 8, 3), np.uint8),
              "summary": {"p": float("nan"), "label": "x"}}]
    path = write_cohort_index(tmp_path, cases, title="cohort 1")
    meta, _ = parse(path.read_bytes())
    assert meta["columns"] == ["p", "n", "label"] and meta["rows"][1]["summary"]["p"] is None
    assert base64.b64decode(meta["rows"][1]["thumbnail"]).startswith(PNG)
    assert os.listdir(tmp_path) == ["index.html"]


@pytest.mark.parametrize("case, message", [
    ({"viewer_relpath": "a.html"}, r"cases\[0\]\['name'\] must be a non-empty string"),
    ({"name": "a", "viewer_relpath": "/abs/a.html"}, r"cases\[0\]\['viewer_relpath'\] must be a path relative"),
    ({"name": "a", "viewer_relpath": "javascript:alert(1)"}, r"must be a path relative"),
    ({"name": "a", "viewer_relpath": "a.html", "thumbnail": b"GIF89a"}, r"cases\[0\]\['thumbnail'\] must be PNG bytes"),
    ({"name": "a", "viewer_relpath": "a.html", "thumbnail": np.zeros((4, 4, 2))}, r"must be an \[H, W\]"),
    ({"name": "a", "viewer_relpath": "a.html", "summary": {"x": [1]}}, r"cases\[0\]\['summary'\]\['x'\] must be a number"),
    ({"name": "a", "viewer_relpath": "a.html", "thumbnai": None}, r"unknown keys \['thumbnai'\]"),
])
def test_cohort_index_refuses_bad_cases_before_writing(tmp_path, case, message):
    with pytest.raises(ValueError, match=message):
        write_cohort_index(tmp_path / "out", [case])
    assert not (tmp_path / "out").exists()


def test_cohort_index_duplicate_names_and_sort_key():
    rows = [{"name": "a", "viewer_relpath": "a.html"}, {"name": "a", "viewer_relpath": "b.html"}]
    with pytest.raises(ValueError, match=r"cases\[1\]\['name'\] must be unique"):
        cohort_index_html(rows)
    with pytest.raises(ValueError, match="sort_by must be 'name' or a summary key"):
        cohort_index_html(rows[:1], sort_by="p")
