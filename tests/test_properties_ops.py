"""Property-based tests (Hypothesis): every op on every CPU-runnable backend against its reference.

Drawn: shapes (odd and empty ones included), dtypes, non-contiguous views, ids and values
(NaN/Inf where the op states a semantics for them). Integer outputs and copies compare exactly;
floating results use the per-dtype tolerance table of ``helpers.py``. Triton runs under
``TRITON_INTERPRET=1`` (conftest), so the sizes stay small. Bad inputs: ``test_properties_errors.py``.
"""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmxai_fast import ops
from mmxai_fast.ops.hu_window import parse_windows
from helpers import HAVE_TRITON, TOLERANCES

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=[
    pytest.mark.triton, pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")])]
FLOATS = [torch.float32, torch.float64, torch.float16, torch.bfloat16]
INTS = [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64]
PROPERTY = settings(max_examples=25, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

shapes = st.lists(st.integers(0, 5), min_size=1, max_size=3).map(tuple)
nonempty_shapes = st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)


def _seed(data) -> torch.Generator:
    return torch.Generator().manual_seed(data.draw(st.integers(0, 2**31 - 1), label="seed"))


def _maybe_view(data, t: torch.Tensor) -> torch.Tensor:
    """``t`` itself, or the same values in a non-contiguous view (strided or transposed)."""
    kind = data.draw(st.sampled_from(["contiguous", "strided", "transposed"]), label="layout")
    if kind == "strided" and t.dim():
        wide = torch.empty(t.shape[:-1] + (2 * t.shape[-1],), dtype=t.dtype)
        wide[..., ::2] = t
        return wide[..., ::2]
    if kind == "transposed" and t.dim() >= 2:
        return t.transpose(0, 1).contiguous().transpose(0, 1)
    return t


def _floats(shape, dtype, g, special=False):
    t = torch.randn(shape, generator=g, dtype=torch.float64)
    if special and t.numel():
        pick = torch.rand(shape, generator=g)
        t[pick < 0.1] = math.nan
        t[(pick >= 0.1) & (pick < 0.15)] = math.inf
        t[(pick >= 0.15) & (pick < 0.2)] = -math.inf
    return t.to(dtype)


def _exact(actual, expected):
    torch.testing.assert_close(actual, expected, rtol=0, atol=0, equal_nan=True)


def _close(actual, expected, dtype):
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(actual.double(), expected.double(), rtol=rtol, atol=atol, equal_nan=True)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_perturb(backend, data):
    g = _seed(data)
    shape = data.draw(shapes, label="shape")
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    x = _maybe_view(data, _floats(shape, dtype, g, special=True))
    mask_shape = tuple(s if data.draw(st.booleans(), label="full dim") else 1 for s in shape)
    num_features = data.draw(st.integers(1, 6), label="F")
    mask = torch.randint(0, num_features, mask_shape, generator=g).to(data.draw(st.sampled_from(INTS)))
    keep = torch.rand((data.draw(st.integers(0, 4), label="B"), num_features), generator=g) < 0.5
    baseline = data.draw(st.sampled_from(["number", "tensor"]), label="baseline")
    baseline = 0.25 if baseline == "number" else _floats(mask_shape, dtype, g)
    out = ops.perturb(x, mask, keep, baseline, backend=backend)
    _exact(out, ops.perturb_reference(x, mask, keep, baseline))


@st.composite
def occlusion_geometry(draw):
    shape = draw(nonempty_shapes)
    window = tuple(draw(st.integers(1, n)) for n in shape)
    strides = tuple(draw(st.integers(1, 3)) for _ in shape)
    return ops.OcclusionWindows(shape, window, strides)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data(), windows=occlusion_geometry())
def test_occlusion_batch(backend, data, windows):
    g = _seed(data)
    lead = data.draw(st.lists(st.integers(1, 2), max_size=1).map(tuple), label="lead")
    dtype = data.draw(st.sampled_from(FLOATS), label="dtype")
    x = _maybe_view(data, _floats(lead + windows.input_shape, dtype, g, special=True))
    ids = data.draw(st.lists(st.integers(0, windows.num_windows - 1), max_size=4), label="ids")
    baseline = -1.5 if data.draw(st.booleans(), label="scalar baseline") else _floats(windows.input_shape, dtype, g)
    out = ops.occlusion_batch(x, windows, torch.tensor(ids, dtype=torch.int64), baseline, backend=backend)
    _exact(out, ops.occlusion_batch_reference(x, windows, ids, baseline))


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data(), windows=occlusion_geometry())
def test_occlusion_attribution(backend, data, windows):
    g = _seed(data)
    lead = data.draw(st.lists(st.integers(0, 2), max_size=1).map(tuple), label="lead")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    diffs = _maybe_view(data, _floats(lead + (windows.num_windows,), dtype, g, special=data.draw(st.booleans())))
    out = ops.occlusion_attribution(diffs, windows, backend=backend)
    _close(out, ops.occlusion_attribution_reference(diffs.double(), windows), dtype)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_shapley_coalitions(backend, data):
    g = _seed(data)
    num_perms, num_features = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 6))
    perms = ops.random_permutations(num_perms, num_features, generator=g).to(data.draw(st.sampled_from(INTS[2:])))
    rows = data.draw(st.integers(0, 6), label="R")
    perm_index = torch.randint(0, num_perms, (rows,), generator=g)
    prefix = torch.randint(0, num_features + 1, (rows,), generator=g)
    out = ops.shapley_coalitions(_maybe_view(data, perms), perm_index, prefix, backend=backend)
    _exact(out, ops.shapley_coalitions_reference(perms, perm_index, prefix))


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_shapley_accumulate(backend, data):
    g = _seed(data)
    num_perms, num_features = data.draw(st.integers(0, 3)), data.draw(st.integers(1, 5))
    tail = data.draw(st.lists(st.integers(0, 3), max_size=2).map(tuple), label="T")
    out_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="outputs dtype")
    sums_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="sums dtype")
    outputs = _maybe_view(data, _floats((num_perms, num_features + 1) + tail, out_dtype, g,
                                        special=data.draw(st.booleans())))
    perms = ops.random_permutations(num_perms, num_features, generator=g)
    start = _floats((num_features,) + tail, sums_dtype, g)
    sums, sumsq = start.clone(), start.clone()
    ops.shapley_accumulate(outputs, perms, sums, sumsq, backend=backend)
    ref_sums, ref_sumsq = start.double().clone(), start.double().clone()
    ops.shapley_accumulate_reference(outputs.double(), perms, ref_sums, ref_sumsq)
    lowest = torch.float32 if torch.float32 in (out_dtype, sums_dtype) else torch.float64
    _close(sums, ref_sums, lowest)
    _close(sumsq, ref_sumsq, lowest)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_hu_window(backend, data):
    g = _seed(data)
    shape = data.draw(shapes, label="shape")
    in_dtype = data.draw(st.sampled_from(INTS[2:] + [torch.float32, torch.float64]), label="volume dtype")
    hu = torch.randint(-1100, 3100, shape, generator=g).double()
    if in_dtype.is_floating_point and hu.numel():
        hu.view(-1)[torch.randperm(hu.numel(), generator=g)[:3]] = torch.tensor([math.nan, math.inf, -math.inf], dtype=torch.float64)[
            : min(3, hu.numel())]
    volume = _maybe_view(data, hu.to(in_dtype))
    windows = data.draw(st.lists(st.tuples(st.floats(-1000, 1000), st.floats(1, 3000)), min_size=1, max_size=3))
    out_dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="out dtype")
    out = ops.hu_window(volume, windows, out_dtype=out_dtype, backend=backend)
    parsed = parse_windows(windows)
    expected = ops.hu_window_reference(volume, [w.level for w in parsed], [w.width for w in parsed], torch.float64)
    _close(out, expected, torch.float32)


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_vq_nearest(backend, data):
    """Small integer values: every distance is exact in float32, so ties and indices compare exactly."""
    g = _seed(data)
    n, k, d = data.draw(st.integers(0, 6)), data.draw(st.integers(1, 5)), data.draw(st.integers(1, 4))
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    z = torch.randint(-3, 4, (n, d), generator=g).to(dtype)
    codebook = torch.randint(-3, 4, (k, d), generator=g).to(dtype)
    if data.draw(st.booleans(), label="non-finite") and n:
        z[torch.randint(0, n, (1,), generator=g), 0] = data.draw(st.sampled_from([math.nan, math.inf]))
        if k > 1:
            codebook[torch.randint(0, k, (1,), generator=g), -1] = math.nan
    indices, dist = ops.vq_nearest(_maybe_view(data, z), _maybe_view(data, codebook), backend=backend)
    finite = torch.isfinite(codebook).all(1)
    expected_idx, expected_dist = ops.vq_nearest_reference(z, codebook[finite])
    expected_idx = finite.nonzero()[:, 0][expected_idx]
    bad = ~torch.isfinite(z).all(1)
    _exact(indices[~bad], expected_idx[~bad])
    _exact(dist[~bad], expected_dist[~bad])
    assert (indices[bad] == -1).all() and not (dist[bad] == 0).any()
    assert torch.equal(torch.isnan(dist[bad]), torch.isnan(z[bad]).any(1))


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_codeword_histogram(backend, data):
    g = _seed(data)
    shape = data.draw(shapes, label="shape")
    k = data.draw(st.integers(1, 7), label="K")
    batch_dims = data.draw(st.sampled_from([0, 1]))
    indices = torch.randint(0, k, shape, generator=g).to(data.draw(st.sampled_from(INTS)))
    out = ops.codeword_histogram(_maybe_view(data, indices), k, batch_dims=batch_dims, backend=backend)
    _exact(out, ops.codeword_histogram_reference(indices, k, batch_dims))


@pytest.mark.parametrize("backend", BACKENDS)
@PROPERTY
@given(data=st.data())
def test_thresholded_value_histogram(backend, data):
    g = _seed(data)
    shape = data.draw(shapes, label="shape")
    value_dtype = data.draw(st.sampled_from(INTS[1:] + [torch.float32, torch.float64]), label="values dtype")
    big = value_dtype in (torch.int64, torch.float64) and data.draw(st.booleans(), label="near 2**62")
    low = 2**62 - 3 if big else data.draw(st.integers(-5, 5), label="low")
    high = low + data.draw(st.integers(0, 6), label="bins - 1")
    values = (torch.randint(-3, 10, shape, generator=g) + (low if big else 0)).to(value_dtype)
    if value_dtype.is_floating_point and values.numel():
        values.view(-1)[0] = math.nan
        values = values + (torch.rand(shape, generator=g) - 0.5).to(value_dtype) * (0 if big else 1)
    scores = _floats(shape, torch.float32, g, special=True)
    threshold = data.draw(st.floats(-1, 1), label="threshold")
    out = ops.thresholded_value_histogram(_maybe_view(data, values), _maybe_view(data, scores), threshold, low, high,
                                          backend=backend)
    _exact(out, ops.thresholded_value_histogram_reference(values, scores, threshold, low, high))
    if big and value_dtype == torch.int64:  # exact integers near 2**62: direct count
        picked = values[scores.double() > threshold]
        assert int(out.sum()) == int(((picked >= low) & (picked <= high)).sum())


@pytest.mark.parametrize("backend", BACKENDS)
@settings(PROPERTY, max_examples=10)
@given(data=st.data())
def test_slic(backend, data):
    g = _seed(data)
    shape = tuple(data.draw(st.integers(1, 5)) for _ in range(data.draw(st.sampled_from([2, 3]))))
    n_mod = data.draw(st.integers(1, 2), label="modalities")
    dtype = data.draw(st.sampled_from([torch.float32, torch.float64]), label="dtype")
    image = _maybe_view(data, torch.rand((n_mod,) + shape, generator=g, dtype=torch.float64).to(dtype))
    mask = (torch.rand(shape, generator=g) < 0.7) if data.draw(st.booleans(), label="mask") else None
    kwargs = dict(n_segments=data.draw(st.integers(1, 6)), compactness=data.draw(st.sampled_from([0.05, 1.0, 20.0])),
                  mask=mask, channel_axis=None, modality_axis=0, max_num_iter=2 if backend == "triton" else 5,
                  enforce_connectivity=data.draw(st.booleans()), start_label=data.draw(st.sampled_from([0, 1])))
    _exact(ops.slic(image, backend=backend, **kwargs), ops.slic_reference(image, **kwargs))
