import pytest
import torch

import mmxai_fast
from mmxai_fast.ops import HU_WINDOW_PRESETS, HUWindow, hu_window, hu_window_reference
from mmxai_fast.ops.hu_window import parse_windows
from helpers import CPU_BACKENDS, FLOAT_DTYPES, assert_close_to_reference, non_contiguous

SHAPES = [(1,), (7,), (5, 123, 123), (3, 17, 9, 11), (4, 6, 5, 7)]
WINDOWS = ["brain", "lung", (500.0, 2000.0), HUWindow(-20.5, 3.0)]


def _hu(shape, dtype):
    v = torch.randint(-1100, 3100, shape, dtype=torch.int32)
    return v.to(dtype)


def _expected(volume, windows):
    parsed = parse_windows(windows)
    return hu_window_reference(volume, [w.level for w in parsed], [w.width for w in parsed], torch.float64)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("in_dtype", [torch.int16, torch.int32, torch.float32, torch.float64])
def test_matches_float64_reference(backend, shape, in_dtype):
    volume = _hu(shape, in_dtype)
    out = hu_window(volume, WINDOWS, backend=backend)
    assert out.shape == (len(WINDOWS),) + shape and out.dtype == torch.float32
    assert_close_to_reference(out, _expected(volume, WINDOWS))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("out_dtype", FLOAT_DTYPES)
def test_output_dtypes(backend, out_dtype):
    volume = _hu((4, 9, 13), torch.int16)
    out = hu_window(volume, ["brain", "bone", "soft_tissue"], out_dtype=out_dtype, backend=backend)
    assert out.dtype == out_dtype
    assert_close_to_reference(out, _expected(volume, ["brain", "bone", "soft_tissue"]), out_dtype)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("in_dtype", [torch.float16, torch.bfloat16, torch.uint8, torch.int8, torch.int64])
def test_other_input_dtypes(backend, in_dtype):
    volume = torch.randint(-100, 120, (3, 11, 5)).to(in_dtype)
    if in_dtype == torch.uint8:
        volume = torch.randint(0, 255, (3, 11, 5), dtype=torch.uint8)
    out = hu_window(volume, [(0.0, 100.0), (40.0, 80.0)], backend=backend)
    assert_close_to_reference(out, _expected(volume, [(0.0, 100.0), (40.0, 80.0)]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_non_contiguous_and_empty(backend):
    volume = _hu((3, 8, 10), torch.int16)
    view = non_contiguous(volume).transpose(0, 2)
    assert not view.is_contiguous()
    assert_close_to_reference(hu_window(view, "lung", backend=backend), _expected(view, "lung"))
    empty = torch.zeros((0, 5), dtype=torch.int16)
    assert hu_window(empty, ["brain", "lung"], backend=backend).shape == (2, 0, 5)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_extreme_hu_values_clip(backend):
    extremes = torch.tensor([-32768, -1024, -1000, 0, 40, 80, 3071, 32767], dtype=torch.int16)
    out = hu_window(extremes, "brain", backend=backend)[0]
    assert out[0] == 0 and out[1] == 0 and out[-1] == 1 and out[-2] == 1
    assert out[4] == pytest.approx(0.5)
    assert_close_to_reference(out, _expected(extremes, "brain")[0])


def test_matches_monai_scale_intensity_range():
    transforms = pytest.importorskip("monai.transforms")
    volume = _hu((6, 40, 40), torch.int16)
    for name in ["brain", "lung", "bone"]:
        w = HU_WINDOW_PRESETS[name]
        monai = transforms.ScaleIntensityRange(a_min=w.lower, a_max=w.upper, b_min=0.0, b_max=1.0, clip=True)
        expected = torch.as_tensor(monai(volume.float()))
        torch.testing.assert_close(hu_window(volume, name)[0], expected.float(), rtol=1e-5, atol=1e-6)


def test_presets_are_well_formed():
    assert HU_WINDOW_PRESETS["brain"] == HUWindow(40, 80)
    assert HU_WINDOW_PRESETS["soft_tissue"] == HUWindow(50, 350)
    assert HU_WINDOW_PRESETS["lung"] == HUWindow(-600, 1500)
    assert HU_WINDOW_PRESETS["bone"] == HUWindow(500, 2000)
    assert HU_WINDOW_PRESETS["full"].lower == -1024 and HU_WINDOW_PRESETS["full"].upper == 3071


def test_bad_arguments_are_named():
    volume = _hu((4, 4), torch.int16)
    with pytest.raises(TypeError, match="volume"):
        hu_window(volume.numpy(), "brain")
    with pytest.raises(ValueError, match="unknown preset"):
        hu_window(volume, "liverish")
    for width in (0, -5, 1e308, 1e-320, float("nan")):  # 1e308 and 1e-320 overflow float32
        with pytest.raises(ValueError, match="HUWindow (level and )?width must be"):
            hu_window(volume, [(40, width)])
    with pytest.raises(ValueError, match=r"HUWindow level must be in \[-1e\+30, 1e\+30\]"):
        hu_window(volume, [(1e35, 100)])
    with pytest.raises(TypeError, match="out_dtype"):
        hu_window(volume, "brain", out_dtype=torch.int32)
    with pytest.raises(TypeError, match="volume"):
        hu_window(volume.to(torch.complex64), "brain")
    with pytest.raises(ValueError, match="windows tensor"):
        hu_window(volume, torch.zeros(3, 3))


def test_windows_from_tensor_and_mapping():
    volume = _hu((5, 5), torch.int16)
    a = hu_window(volume, torch.tensor([[40.0, 80.0], [-600.0, 1500.0]]))
    b = hu_window(volume, {"x": HU_WINDOW_PRESETS["brain"], "y": HU_WINDOW_PRESETS["lung"]})
    torch.testing.assert_close(a, b)


def test_torch_compile():
    volume = _hu((2, 8, 8), torch.int16)

    def f(v):
        return hu_window(v, ["brain", "lung"]).sum(0) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(volume), f(volume))
