import math

import numpy as np
import pytest
import torch

from mmxai_fast.ops.occlusion import (
    OcclusionWindows,
    occlusion_attribution,
    occlusion_attribution_reference,
    occlusion_batch,
    occlusion_batch_reference,
)
from helpers import CPU_BACKENDS, FLOAT_DTYPES, TOLERANCES, assert_close_to_reference, non_contiguous

captum_attr = pytest.importorskip("captum.attr")

# (input_shape, window, strides)
GEOMETRIES = [
    ((1,), (1,), 1),                                # one element
    ((7,), (3,), 3),                                # 1-D, stride does not divide n - w: cropped last window
    ((10,), (2,), 3),                               # stride > window: gaps (uncovered elements)
    ((5, 9), (2, 3), (2, 2)),                       # 2-D, cropped in both dims
    ((6, 8), (6, 8), 5),                            # window == input size (stride irrelevant)
    ((5, 13, 12), (3, 4, 5), (2, 3, 4)),            # 3-D odd sizes
    ((4, 6, 5, 7), (1, 3, 2, 4), (1, 2, 2, 3)),     # 4-channel 3-D
    ((4, 6, 5, 7), (2, 2, 2, 2), (3, 4, 1, 3)),     # 4-D with gaps
]
# Beyond Captum (it would crash): the last position of a dim starts past the end (empty window).
EXTRA_GEOMETRIES = [((10,), (1,), 20), ((9, 7), (2, 1), (8, 9))]


def _ids(geometries):
    return ["x".join(map(str, g[0])) + f"-w{'x'.join(map(str, g[1]))}" for g in geometries]


GEOMETRY_IDS = _ids(GEOMETRIES)
ALL_GEOMETRIES, ALL_IDS = GEOMETRIES + EXTRA_GEOMETRIES, _ids(GEOMETRIES + EXTRA_GEOMETRIES)
LEADS = [(), (2,), (2, 3)]


def _windows(geometry):
    return OcclusionWindows(*geometry)


def _captum_mask(windows, index):
    """Captum's own mask for window ``index`` (``Occlusion._occlusion_mask``), ``input_shape``."""
    occlusion = captum_attr.Occlusion(lambda x: x)
    x = torch.zeros((1,) + windows.input_shape)
    mask = occlusion._occlusion_mask(x, index, torch.ones(windows.window), windows.strides, windows.counts,
                                     is_expanded_input=False)
    return mask[0]


def _captum_shift_counts(windows):
    current = np.subtract(windows.input_shape, windows.window)
    return tuple(int(c) for c in np.add(np.ceil(np.divide(current, windows.strides)).astype(int), 1))


# ------------------------------------------------------------------------------------ geometry


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_counts_and_boxes_match_captum(geometry):
    windows = _windows(geometry)
    assert windows.counts == _captum_shift_counts(windows)
    assert windows.num_windows == math.prod(windows.counts)
    coverage = torch.zeros(windows.input_shape)
    for index in range(windows.num_windows):
        mask = torch.zeros(windows.input_shape)
        mask[windows.window_slices(index)] = 1
        assert torch.equal(mask, _captum_mask(windows, index).float()), index
        coverage += mask
    assert torch.equal(windows.coverage(), coverage)
    assert windows.coverage(torch.float64).dtype == torch.float64


def test_window_order_first_dim_fastest_and_border_crop():
    windows = OcclusionWindows((7, 5), (3, 2), (3, 2))
    assert windows.counts == (3, 3)
    assert windows.window_box(0) == ((0, 0), (3, 2))
    assert windows.window_box(1) == ((3, 0), (6, 2))   # index 1 moves along dim 0
    assert windows.window_box(2) == ((6, 0), (7, 2))   # cropped: 6 + 3 > 7
    assert windows.window_box(3) == ((0, 2), (3, 4))
    assert windows.window_box(8) == ((6, 4), (7, 5))
    assert windows.position(5) == (2, 1)


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_stride_past_the_end_gives_an_empty_window(backend):
    windows = OcclusionWindows((10,), (1,), 20)
    assert windows.counts == (2,) and windows.window_box(1) == ((10,), (10,))
    x = torch.arange(10.0)
    assert torch.equal(occlusion_batch(x, windows, [1], -1.0, backend=backend)[0], x)
    out = occlusion_attribution(torch.tensor([2.0, 5.0]), windows, backend=backend)
    assert out[0] == 2.0 and torch.isnan(out[1:]).all()  # the empty window covers nothing


# --------------------------------------------------------------------------------- batch


def _baseline_variants(shape):
    return [0.0, -2.5, torch.randn(shape[-1:]), torch.randn((1,) + shape[1:]) if len(shape) > 1 else torch.randn(1)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", ALL_GEOMETRIES, ids=ALL_IDS)
@pytest.mark.parametrize("lead", LEADS, ids=str)
def test_batch_matches_reference(backend, geometry, lead):
    windows = _windows(geometry)
    x = torch.randn(lead + windows.input_shape)
    ids = torch.randint(0, windows.num_windows, (3,))
    ids[0] = windows.num_windows - 1  # the last (most cropped) window
    for baseline in _baseline_variants(x.shape):
        out = occlusion_batch(x, windows, ids, baseline, backend=backend)
        assert out.shape == (3,) + x.shape and out.dtype == x.dtype
        assert torch.equal(out, occlusion_batch_reference(x, windows, ids, baseline))


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_batch_out_buffer(backend, dtype):
    windows = OcclusionWindows((3, 7, 6), (2, 3, 3), (1, 2, 2))
    x = torch.randn((2,) + windows.input_shape).to(dtype)
    buffer = torch.full((5, 2) + windows.input_shape, float("nan"), dtype=dtype)
    for ids in ([0, 3, windows.num_windows - 1], [1, 2, 4, 5, 6]):  # reuse: every element rewritten
        out = buffer[:len(ids)]
        result = occlusion_batch(x, windows, ids, -1.5, backend=backend, out=out)
        assert result is out
        assert torch.equal(result, occlusion_batch_reference(x, windows, ids, -1.5))
    assert occlusion_batch(x, windows, [], backend=backend, out=buffer[:0]).shape == (0, 2) + windows.input_shape


def test_batch_out_buffer_bad_arguments():
    windows = OcclusionWindows((3, 7, 6), (2, 3, 3), (1, 2, 2))
    x = torch.randn(windows.input_shape)
    with pytest.raises(TypeError, match="out must be a torch.Tensor"):
        occlusion_batch(x, windows, [0, 1], out=[0])
    with pytest.raises(ValueError, match=r"out must be a contiguous torch.float32 tensor of shape \(2, 3, 7, 6\)"):
        occlusion_batch(x, windows, [0, 1], out=torch.empty(3, 3, 7, 6))
    with pytest.raises(ValueError, match="got a contiguous torch.float64"):
        occlusion_batch(x, windows, [0, 1], out=torch.empty(2, 3, 7, 6, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-contiguous"):
        occlusion_batch(x, windows, [0, 1], out=torch.empty(2, 3, 6, 7).transpose(-1, -2))
    with pytest.raises(ValueError, match="out must be on the same device"):
        occlusion_batch(x, windows, [0, 1], out=torch.empty(2, 3, 7, 6, device="meta"))
    big = torch.randn((3,) + windows.input_shape)
    with pytest.raises(ValueError, match="out must not share memory"):
        occlusion_batch(big[0], windows, [0, 1], out=big[1:])


@pytest.mark.parametrize("backend", ["reference"] + CPU_BACKENDS)
def test_batch_equals_captum_mask_formula(backend):
    windows = OcclusionWindows((4, 6, 5, 7), (1, 3, 2, 4), (1, 2, 2, 3))
    x = torch.randn((2,) + windows.input_shape)
    baseline = torch.randn((1,) + windows.input_shape)
    ids = list(range(0, windows.num_windows, 7))
    out = occlusion_batch(x, windows, ids, baseline, backend=backend)
    for p, index in enumerate(ids):
        mask = _captum_mask(windows, index).to(x.dtype)
        assert torch.equal(out[p], x * (1 - mask) + baseline * mask)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_batch_dtypes(backend, dtype):
    windows = OcclusionWindows((3, 7, 6), (2, 3, 3), (1, 2, 2))
    x = torch.randn((2,) + windows.input_shape).to(dtype)
    baseline = torch.randn(windows.input_shape, dtype=torch.float64)  # cast to x's dtype
    out = occlusion_batch(x, windows, range(0, windows.num_windows, 5), baseline, backend=backend)
    assert out.dtype == dtype
    assert torch.equal(out, occlusion_batch_reference(x, windows, range(0, windows.num_windows, 5), baseline))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_non_contiguous(backend):
    windows = OcclusionWindows((5, 9, 8), (2, 3, 3), (2, 2, 3))
    x = non_contiguous(torch.randn((3,) + windows.input_shape))
    baseline = non_contiguous(torch.randn(windows.input_shape))
    ids = torch.arange(windows.num_windows)[::3]
    assert not (x.is_contiguous() or baseline.is_contiguous() or ids.is_contiguous())
    out = occlusion_batch(x, windows, ids, baseline, backend=backend)
    assert torch.equal(out, occlusion_batch_reference(x, windows, ids, baseline))
    # x laid out channels-last-like: a permuted view
    y = torch.randn(9, 8, 5).permute(2, 0, 1)
    assert torch.equal(occlusion_batch(y, windows, [0, 4], 1.0, backend=backend),
                       occlusion_batch_reference(y, windows, [0, 4], 1.0))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_batch_empty(backend):
    windows = OcclusionWindows((4, 5), (2, 2), 2)
    x = torch.randn(3, 4, 5)
    assert occlusion_batch(x, windows, torch.zeros(0, dtype=torch.long), backend=backend).shape == (0, 3, 4, 5)
    assert occlusion_batch(torch.randn(0, 4, 5), windows, [1, 2], backend=backend).shape == (2, 0, 4, 5)
    one = torch.tensor([3.0])
    assert torch.equal(occlusion_batch(one, OcclusionWindows((1,), (1,)), [0], 7.0, backend=backend),
                       torch.tensor([[7.0]]))


# --------------------------------------------------------------------------- attribution


def _attribution_by_masks(diffs, windows):
    """Captum's accumulation spelled out: total += diff * mask, weights += mask, total / weights."""
    flat = diffs.double().reshape(-1, windows.num_windows)
    total = torch.zeros((flat.shape[0],) + windows.input_shape, dtype=torch.float64)
    weights = torch.zeros(windows.input_shape, dtype=torch.float64)
    for index in range(windows.num_windows):
        mask = _captum_mask(windows, index).double()
        total += flat[:, index].view((-1,) + (1,) * windows.ndim) * mask
        weights += mask
    return (total / weights).reshape(diffs.shape[:-1] + windows.input_shape)


@pytest.mark.parametrize("geometry", GEOMETRIES, ids=GEOMETRY_IDS)
def test_attribution_reference_matches_mask_accumulation(geometry):
    windows = _windows(geometry)
    diffs = torch.randn(2, windows.num_windows, dtype=torch.float64)
    torch.testing.assert_close(occlusion_attribution_reference(diffs, windows), _attribution_by_masks(diffs, windows),
                               rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("geometry", ALL_GEOMETRIES, ids=ALL_IDS)
@pytest.mark.parametrize("lead", LEADS, ids=str)
def test_attribution_matches_reference(backend, geometry, lead):
    windows = _windows(geometry)
    diffs = torch.randn(lead + (windows.num_windows,), dtype=torch.float64)
    out = occlusion_attribution(diffs, windows, backend=backend)
    expected = occlusion_attribution_reference(diffs, windows)
    assert out.shape == lead + windows.input_shape and out.dtype == torch.float64
    uncovered = windows.coverage() == 0
    assert torch.equal(torch.isnan(out), uncovered.expand(out.shape))
    torch.testing.assert_close(out, expected, rtol=TOLERANCES[torch.float64][0], atol=TOLERANCES[torch.float64][1],
                               equal_nan=True)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
def test_attribution_dtypes(backend, dtype):
    windows = OcclusionWindows((4, 6, 5, 7), (1, 3, 2, 4), (1, 1, 2, 3))
    diffs = torch.randn(2, windows.num_windows).to(dtype)
    out = occlusion_attribution(diffs, windows, backend=backend)
    assert out.dtype == dtype
    assert_close_to_reference(out, occlusion_attribution_reference(diffs.double(), windows))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attribution_odd_volume(backend):
    windows = OcclusionWindows((5, 123, 123), (5, 30, 30), (5, 20, 20))
    diffs = torch.randn(windows.num_windows)
    assert_close_to_reference(occlusion_attribution(diffs, windows, backend=backend),
                              occlusion_attribution_reference(diffs.double(), windows))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_attribution_non_contiguous_and_empty(backend):
    windows = OcclusionWindows((5, 7, 6), (2, 3, 2), (2, 2, 1))
    diffs = torch.randn(windows.num_windows, 3).T  # (3, num_windows), transposed view
    assert not diffs.is_contiguous()
    assert_close_to_reference(occlusion_attribution(diffs, windows, backend=backend),
                              occlusion_attribution_reference(diffs.double(), windows))
    empty = occlusion_attribution(torch.zeros(0, windows.num_windows), windows, backend=backend)
    assert empty.shape == (0,) + windows.input_shape
    one = occlusion_attribution(torch.tensor([2.5]), OcclusionWindows((1,), (1,)), backend=backend)
    assert torch.equal(one, torch.tensor([2.5]))


# ------------------------------------------------------------------------- Captum end to end


def _sweep(model, x, windows, baseline, target, backend, batch=7):
    """occlusion_batch + model + occlusion_attribution, as an engine would run Occlusion."""
    with torch.no_grad():
        initial = model(x)[torch.arange(x.shape[0]), target]
        diffs = []
        for start in range(0, windows.num_windows, batch):
            ids = range(start, min(start + batch, windows.num_windows))
            occluded = occlusion_batch(x, windows, ids, baseline, backend=backend)
            out = model(occluded.flatten(0, 1)).view(len(ids), x.shape[0], -1)
            diffs.append(initial - out[:, torch.arange(x.shape[0]), target])  # (P, N)
        return occlusion_attribution(torch.cat(diffs).T, windows, backend=backend)


def _linear_model(features, classes=3):
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(features, classes))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("case", [
    # (example shape, window, strides, baseline kind)
    ((2, 5, 7), (1, 3, 2), (1, 2, 2), "scalar"),
    ((2, 5, 7), (2, 2, 3), (1, 1, 3), "tensor"),
    ((9,), (4,), 3, "scalar"),
    ((2, 3, 4, 5), (1, 2, 3, 2), (1, 1, 2, 2), "per-example"),
], ids=["2ch-2d", "2ch-2d-baseline", "1d", "2ch-3d-baselines"])
def test_reproduces_captum_occlusion(backend, case):
    shape, window, strides, kind = case
    x = torch.randn((3,) + shape)
    model = _linear_model(math.prod(shape))
    baseline = {"scalar": 0.25, "tensor": torch.randn((1,) + shape), "per-example": torch.randn((3,) + shape)}[kind]
    target = [0, 2, 1]
    expected = captum_attr.Occlusion(model).attribute(x, sliding_window_shapes=window, strides=strides,
                                                      baselines=baseline, target=target)
    out = _sweep(model, x, OcclusionWindows(shape, window, strides), baseline, torch.tensor(target), backend)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_gaps_give_nan_like_captum(backend):
    # Captum's Occlusion asserts stride <= window; its FeatureAblation core, called the way
    # Occlusion.attribute calls it, shows what it would produce: 0 / 0 = NaN on the gaps.
    shape, window, strides = (2, 10), (1, 2), (1, 3)
    windows = OcclusionWindows(shape, window, strides)
    x = torch.randn((2,) + shape)
    model = _linear_model(20)
    occlusion = captum_attr.Occlusion(model)
    expected = captum_attr.FeatureAblation.attribute.__wrapped__(
        occlusion, x, baselines=0.0, target=1, additional_forward_args=None, perturbations_per_eval=1,
        sliding_window_tensors=(torch.ones(window),), shift_counts=(windows.counts,), strides=(strides,),
        show_progress=False)
    out = _sweep(model, x, windows, 0.0, torch.tensor([1, 1]), backend)
    assert torch.isnan(expected).any()
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-6, equal_nan=True)


# ------------------------------------------------------------------------------ arguments


def test_bad_windows():
    with pytest.raises(ValueError, match="exceeds input_shape"):
        OcclusionWindows((4, 5), (2, 6))
    with pytest.raises(ValueError, match=r"window must have 2 entries"):
        OcclusionWindows((4, 5), (2,))
    with pytest.raises(ValueError, match=r"strides must have 2 entries"):
        OcclusionWindows((4, 5), (2, 2), (1, 1, 1))
    with pytest.raises(ValueError, match=r"strides\[1\] must be a positive int, got 0"):
        OcclusionWindows((4, 5), (2, 2), (1, 0))
    with pytest.raises(ValueError, match=r"input_shape\[0\] must be a positive int"):
        OcclusionWindows((0, 5), (1, 1))
    with pytest.raises(ValueError, match="at least one dim"):
        OcclusionWindows((), ())
    with pytest.raises(TypeError, match=r"window\[0\] must be an int"):
        OcclusionWindows((4,), (2.5,))
    with pytest.raises(TypeError, match="input_shape must be a sequence"):
        OcclusionWindows(4, (2,))
    windows = OcclusionWindows(torch.Size([4, 5]), [2, 2], 2)  # normalised to tuples
    assert windows.input_shape == (4, 5) and windows.strides == (2, 2)
    with pytest.raises(ValueError, match=r"window index must be an int in \[0, 6\), got 6"):
        windows.window_box(6)
    with pytest.raises(ValueError, match=r"window index must be an int in \[0, 6\), got 1.0"):
        windows.position(1.0)
    assert windows.position(np.int64(5)) == (1, 2)


def test_bad_arguments_are_named():
    windows = OcclusionWindows((4, 5), (2, 2), 2)
    x = torch.randn(3, 4, 5)
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        occlusion_batch(x.numpy(), windows, [0])
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        occlusion_batch(x.long(), windows, [0])
    with pytest.raises(ValueError, match=r"x must have shape \(\*lead, 4, 5\), got \(3, 5, 4\)"):
        occlusion_batch(x.transpose(1, 2), windows, [0])
    with pytest.raises(TypeError, match="windows must be an OcclusionWindows"):
        occlusion_batch(x, ((4, 5), (2, 2)), [0])
    with pytest.raises(ValueError, match=r"window_ids must be in \[0, 6\), got min 0 and max 6"):
        occlusion_batch(x, windows, torch.tensor([0, 6]))
    with pytest.raises(ValueError, match=r"window_ids must be in \[0, 6\), got min -1"):
        occlusion_batch(x, windows, torch.tensor([-1, 2]), backend="cpu")
    with pytest.raises(ValueError, match=r"window_ids must be in \[0, 6\), got range\(0, 7\)"):
        occlusion_batch(x, windows, range(7))
    with pytest.raises(TypeError, match="window_ids must have an integer dtype"):
        occlusion_batch(x, windows, torch.tensor([0.0]))
    with pytest.raises(ValueError, match=r"window_ids must be 1-D"):
        occlusion_batch(x, windows, torch.tensor([[0]]))
    with pytest.raises(ValueError, match="baseline of shape"):
        occlusion_batch(x, windows, [0], torch.zeros(2, 4, 5))
    with pytest.raises(TypeError, match="baseline must be a number"):
        occlusion_batch(x, windows, [0], "zero")
    with pytest.raises(ValueError, match="backend must be one of"):
        occlusion_batch(x, windows, [0], backend="gpu")
    diffs = torch.randn(3, windows.num_windows)
    with pytest.raises(TypeError, match="diffs must have a floating dtype"):
        occlusion_attribution(diffs.long(), windows)
    with pytest.raises(ValueError, match=r"diffs must have shape \(\*lead, num_windows=6\), got \(3, 5\)"):
        occlusion_attribution(diffs[:, :5], windows)
    with pytest.raises(TypeError, match="windows must be an OcclusionWindows"):
        occlusion_attribution(diffs, None)


def test_torch_compile():
    windows = OcclusionWindows((2, 6, 5), (1, 3, 2), (1, 2, 2))
    weight = torch.randn(60)

    def explain(x):
        occluded = occlusion_batch(x, windows, range(windows.num_windows), 0.5)
        diffs = (x.flatten(1) @ weight)[None] - occluded.flatten(2) @ weight  # (P, N)
        return occlusion_attribution(diffs.T, windows)

    x = torch.randn(2, 2, 6, 5)
    compiled = torch.compile(explain, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(x), explain(x))
