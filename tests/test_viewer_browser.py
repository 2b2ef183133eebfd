"""viewer.html and index.html in a real headless Chromium: what a person sees on the canvases.

One browser for the whole module. Skips only when Chromium/chromedriver/selenium cannot be found
(tools/bootstrap.sh installs Debian's chromium and chromium-driver when run as root).
"""
import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Case, Explanation, RunStats, modality_importance
from mmxai_fast.pipeline.viewer import viewer_thumbnail, write_viewer
from mmxai_fast.pipeline.viewer_cohort import write_cohort_index
from pipeline_data import AFFINE
from test_viewer import parse, unpack
from viewer_browser import chromium_paths, load, open_chromium

_FOUND = chromium_paths()
pytestmark = pytest.mark.skipif(isinstance(_FOUND, str), reason=f"no headless browser: {_FOUND}")

SHAPE = (40, 32, 24)  # X, Y, Z: distinct sizes so a swapped axis shows
BLOCK = (slice(5, 11), slice(20, 26), slice(10, 14))  # where modality 0's heatmap is non-zero
ROI = (slice(24, 34), slice(6, 14), slice(8, 16))


def _case_and_explanations():
    x, y, z = np.meshgrid(*[np.arange(n, dtype=np.float32) for n in SHAPE], indexing="ij")
    image = torch.from_numpy(np.stack([x + 2 * y + 5 * z, 200 - 3 * z + y]))
    roi = torch.zeros(SHAPE, dtype=torch.bool)
    roi[ROI] = True
    case = Case(image, ("t1", "flair"), AFFINE, roi=roi, sources=("synthetic.nii.gz",) * 2)
    heat = torch.zeros(2, *SHAPE)
    heat[(0, *BLOCK)] = 2.0
    heat[1, 30:36, 2:6, 10:14] = -1.0
    other = torch.zeros(2, *SHAPE)
    other[0, 20:30, 10:20, 0:24] = 0.5
    exps = {}
    for method, attr in (("Occlusion", heat), ("Saliency", other)):
        exps[method] = Explanation(attr, method, 1, None, modality_importance(attr, case.modalities),
                                   RunStats(method, 12, 0.5, 0.4, 12), case.modalities, {"window": [1, 4, 4, 4]})
    return case, exps


@pytest.fixture(scope="module")
def driver():
    d = open_chromium()
    yield d
    d.quit()


@pytest.fixture(scope="module")
def viewer(tmp_path_factory):
    case, exps = _case_and_explanations()
    path = write_viewer(case, exps, tmp_path_factory.mktemp("viewer"))
    meta, blobs = parse(path.read_bytes())
    images = [unpack(blobs[i], meta["dims"], signed=False) for i in meta["images"]]
    return path, meta, images


@pytest.fixture
def page(driver, viewer):
    path, meta, images = viewer
    assert load(driver, path) == "1"
    yield driver, meta, images
    errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, f"console errors: {errors}"


def pixel(d, canvas_id, col, row):
    """RGBA at the centre of in-plane voxel (col, row-from-the-bottom) of a canvas."""
    return d.execute_script("""
        const c = document.getElementById(arguments[0]);
        const cols = Number(c.dataset.cols), rows = Number(c.dataset.rows);
        const px = Math.floor((arguments[1] + 0.5) * c.width / cols);
        const py = Math.floor((rows - 1 - arguments[2] + 0.5) * c.height / rows);
        return Array.from(c.getContext("2d").getImageData(px, py, 1, 1).data);""", canvas_id, col, row)


def canvas_pixels(d, canvas_id):
    """The whole canvas as an [H, W, 4] uint8 array (sent as a PNG: small and exact)."""
    import base64
    import io

    from PIL import Image

    url = d.execute_script("return document.getElementById(arguments[0]).toDataURL('image/png')", canvas_id)
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGBA"))


def label(d):
    return d.find_element("id", "slice-label").text


def set_range(d, element_id, value):
    """Move a range input as a drag would: set its value and fire the input event."""
    d.execute_script("const e = document.getElementById(arguments[0]); e.value = arguments[1];"
                     "e.dispatchEvent(new Event('input', {bubbles: true}));", element_id, value)


def test_opens_on_the_roi_slice_with_every_modality_and_method(page):
    d, meta, _ = page
    assert label(d) == f"Axial {meta['initial'][2] + 1} / {SHAPE[2]}" and meta["initial"][2] == 8
    canvases = d.find_elements("css selector", ".cell canvas")
    assert len(canvases) == 2 * 2 and all(c.size["width"] > 100 for c in canvases)
    text = d.find_element("tag name", "body").text
    for expected in ("t1", "flair", "Occlusion", "Saliency", "12 model evaluations", "Run summary", "0.500 s"):
        assert expected in text
    bars = d.find_elements("css selector", ".bars .fill")
    assert [b.get_attribute("style") for b in bars[:2]] == ["width: 100%;", "width: 33.3333%;"]


def test_slider_moves_the_slice_shown(page):
    d, _, images = page
    before = canvas_pixels(d, "view-0-0")
    slider = d.find_element("id", "slice")
    slider.click()  # a click in the middle of the track: about the middle slice
    assert abs(int(label(d).split()[1]) - SHAPE[2] // 2) <= 1
    set_range(d, "slice", 3)
    assert label(d) == f"Axial 4 / {SHAPE[2]}"
    after = canvas_pixels(d, "view-0-0")
    assert (before != after).mean() > 0.5
    set_range(d, "opacity", 0)
    for x, y in ((0, 0), (17, 9), (39, 31)):  # bare image pixels are the stored grey values, unflipped x, y up
        assert pixel(d, "view-0-0", x, y)[:3] == [int(images[0][x, y, 3])] * 3


def test_overlay_appears_only_where_the_heatmap_is_non_zero(page):
    d, meta, images = page
    set_range(d, "slice", 11)  # inside BLOCK's z range, outside the ROI's outline
    d.find_element("id", "roi").click()  # outline off, to read the bare blend
    inside, outside = (7, 22), (20, 22)
    r, g, b, _ = pixel(d, "view-0-0", *inside)
    grey = int(images[0][inside[0], inside[1], 11])
    alpha = meta["opacity"]
    assert abs(r - (grey + (255 - grey) * alpha)) <= 1 and abs(g - grey * (1 - alpha)) <= 1 and g == b  # red
    assert pixel(d, "view-0-0", *outside)[:3] == [int(images[0][outside[0], outside[1], 11])] * 3
    r, g, b, _ = pixel(d, "view-0-1", 32, 3)  # flair: negative block (-0.5 after scaling) is blue
    base, code = int(images[1][32, 3, 11]), -64
    expected = [base + (c - base) * abs(code) / 127 * alpha for c in meta["lut"][code + 127]]
    assert np.abs(np.subtract([r, g, b], expected)).max() <= 1 and b > r + 40 and r == g
    assert pixel(d, "view-1-0", *inside)[:3] == [grey] * 3  # the other method's row has no heat there
    set_range(d, "opacity", 0)
    assert pixel(d, "view-0-0", *inside)[:3] == [grey] * 3  # opacity 0: the bare image
    assert d.find_element("id", "opacity-label").text == "0%"


def test_roi_outline_is_drawn_and_can_be_hidden(page):
    d, _, _ = page
    set_range(d, "slice", 10)

    def lime_pixels():
        rgba = canvas_pixels(d, "view-0-0").reshape(-1, 4).astype(int)
        return int(((rgba[:, 1] > 180) & (rgba[:, 0] < 90) & (rgba[:, 2] < 90)).sum())

    assert lime_pixels() > 100
    d.find_element("id", "roi").click()
    assert lime_pixels() == 0


def test_coronal_and_sagittal_show_the_other_axes(page):
    d, meta, images = page
    d.find_element("id", "plane-coronal").click()
    canvas = d.find_element("id", "view-0-0")
    assert (canvas.get_attribute("data-cols"), canvas.get_attribute("data-rows")) == ("40", "24")
    y = meta["initial"][1]
    assert label(d) == f"Coronal {y + 1} / {SHAPE[1]}"
    set_range(d, "opacity", 0)
    for x, z in ((0, 0), (12, 20), (39, 23)):
        assert pixel(d, "view-0-0", x, z)[:3] == [int(images[0][x, y, z])] * 3
    d.find_element("id", "plane-sagittal").click()
    assert (canvas.get_attribute("data-cols"), canvas.get_attribute("data-rows")) == ("32", "24")
    x = meta["initial"][0]
    assert pixel(d, "view-0-1", 30, 5)[:3] == [int(images[1][x, 30, 5])] * 3


def test_keyboard_scrolls_the_slices(page):
    from selenium.webdriver.common.keys import Keys

    d, meta, _ = page
    body = d.find_element("tag name", "body")
    z = meta["initial"][2]
    before = canvas_pixels(d, "view-0-1")
    body.send_keys(Keys.ARROW_UP)
    assert label(d) == f"Axial {z + 2} / {SHAPE[2]}"
    assert (canvas_pixels(d, "view-0-1") != before).any()
    body.send_keys(Keys.PAGE_UP)
    assert label(d) == f"Axial {z + 12} / {SHAPE[2]}"
    body.send_keys(Keys.PAGE_DOWN, Keys.ARROW_DOWN, Keys.ARROW_DOWN)
    assert label(d) == f"Axial {z} / {SHAPE[2]}"
    body.send_keys(Keys.END)
    assert label(d) == f"Axial {SHAPE[2]} / {SHAPE[2]}"
    body.send_keys("c")
    assert label(d).startswith("Coronal")


def test_screenshot_artefact(page, tmp_path_factory):
    d, _, _ = page
    path = tmp_path_factory.mktemp("artefacts") / "viewer_screenshot.png"
    assert d.save_screenshot(str(path))
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 10_000


def test_cohort_index_sorts_and_links(driver, tmp_path):
    case, exps = _case_and_explanations()
    thumb = viewer_thumbnail(case, exps["Occlusion"])
    cases = [{"name": f"case{i}", "viewer_relpath": f"case{i}/viewer.html", "thumbnail": thumb,
              "summary": {"p_high": p, "grade": g}} for i, (p, g) in enumerate([(0.7, "high"), (0.1, "low"), (0.9, None)])]
    path = write_cohort_index(tmp_path, cases, title="test cohort")
    assert load(driver, path) == "1"

    def order():
        return [r.get_attribute("data-name") for r in driver.find_elements("css selector", "tr[data-name]")]

    assert order() == ["case0", "case1", "case2"]
    driver.find_element("css selector", "th[data-key='p_high']").click()
    assert order() == ["case1", "case0", "case2"]
    driver.find_element("css selector", "th[data-key='p_high']").click()
    assert order() == ["case2", "case0", "case1"]
    driver.find_element("id", "direction").click()
    from selenium.webdriver.support.ui import Select

    Select(driver.find_element("id", "sort")).select_by_value("grade")
    assert order()[-1] == "case2"  # missing values last
    link = driver.find_element("link text", "case1")
    assert link.get_attribute("href") == (tmp_path / "case1" / "viewer.html").as_uri()
    assert all(driver.execute_script("return arguments[0].naturalWidth", img) > 0
               for img in driver.find_elements("css selector", "td img"))
    assert not [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]
