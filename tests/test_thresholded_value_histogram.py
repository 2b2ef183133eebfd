import numpy as np
import pytest
import torch

from mmxai_fast.ops import thresholded_value_histogram, thresholded_value_histogram_reference
from helpers import CPU_BACKENDS, non_contiguous

ALL_BACKENDS = ["reference"] + CPU_BACKENDS
SHAPES = [(1,), (7,), (5, 123, 123), (3, 17, 9, 11), (4, 6, 5, 7), (2, 0, 3), (0, 5)]
LOW, HIGH = -1024, 3071


def _numpy_histogram(values, scores, threshold, low, high, batch_dims):
    """Independent oracle: np.unique over the selected values of each row."""
    v, s = values.double().numpy(), scores.double().numpy()
    rows = [(v, s)] if batch_dims == 0 else list(zip(v, s))
    out = np.zeros((len(rows), high - low + 1), dtype=np.int64)
    for b, (rv, rs) in enumerate(rows):
        picked = np.round(rv[rs > threshold])  # numpy rounds half to even too
        picked = picked[(picked >= low) & (picked <= high)].astype(np.int64)
        uniq, counts = np.unique(picked, return_counts=True)
        out[b, uniq - low] = counts
    out = torch.from_numpy(out)
    return out if batch_dims else out[0]


def _hu(shape, dtype):
    return torch.randint(-1100, 3100, shape, dtype=torch.int32).to(dtype)


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("batch_dims", [0, 1])
def test_exact_counts(backend, shape, batch_dims):
    values, scores = _hu(shape, torch.int16), torch.rand(shape)
    counts = thresholded_value_histogram(values, scores, 0.6, LOW, HIGH, batch_dims=batch_dims, backend=backend)
    expected = _numpy_histogram(values, scores, 0.6, LOW, HIGH, batch_dims)
    assert counts.dtype == torch.int64 and counts.shape == expected.shape
    assert torch.equal(counts, expected)
    assert torch.equal(counts, thresholded_value_histogram_reference(values, scores, 0.6, LOW, HIGH, batch_dims))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("value_dtype", [torch.int16, torch.int32, torch.int64, torch.float32, torch.float64])
@pytest.mark.parametrize("score_dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_value_and_score_dtypes(backend, value_dtype, score_dtype):
    values = _hu((3, 21, 13), value_dtype)
    if value_dtype.is_floating_point:  # fractional HU, with exact .5 ties
        values = values + torch.tensor([0.5, -0.5, 0.25, -1.5])[torch.randint(0, 4, values.shape)].to(value_dtype)
    scores = torch.rand(values.shape).to(score_dtype)
    for batch_dims in (0, 1):
        got = thresholded_value_histogram(values, scores, 0.375, LOW, HIGH, batch_dims=batch_dims, backend=backend)
        assert torch.equal(got, _numpy_histogram(values, scores, 0.375, LOW, HIGH, batch_dims))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("value_dtype", [torch.uint8, torch.int8, torch.float16, torch.bfloat16])
def test_small_value_dtypes(backend, value_dtype):
    values = torch.randint(0, 120, (4, 33)).to(value_dtype)
    scores = torch.rand(values.shape, dtype=torch.float64)
    got = thresholded_value_histogram(values, scores, 0.5, -3, 140, batch_dims=1, backend=backend)
    assert torch.equal(got, _numpy_histogram(values, scores, 0.5, -3, 140, 1))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_non_contiguous_views(backend):
    values, scores = _hu((6, 9, 10), torch.int16), torch.rand(6, 9, 10)
    v_view, s_view = non_contiguous(values).transpose(1, 2), scores.transpose(1, 2)
    assert not v_view.is_contiguous() and not s_view.is_contiguous()
    for batch_dims in (0, 1):
        got = thresholded_value_histogram(v_view, s_view, 0.5, LOW, HIGH, batch_dims=batch_dims, backend=backend)
        assert torch.equal(got, _numpy_histogram(v_view, s_view, 0.5, LOW, HIGH, batch_dims))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_policy_out_of_range_nan_and_rounding(backend):
    values = torch.tensor([-2000.0, -1025.0, -1024.0, 0.5, 1.5, 2.5, -0.5, 3071.0, 3071.4, 3071.5, 32000.0,
                           float("nan"), float("inf"), 7.0, 7.0])
    scores = torch.ones_like(values)
    scores[-1] = float("nan")  # a NaN score never counts
    counts = thresholded_value_histogram(values, scores, 0.0, LOW, HIGH, backend=backend)
    counted = {v + LOW: int(c) for v, c in enumerate(counts.tolist()) if c}
    # 0.5 -> 0, -0.5 -> -0, 1.5 -> 2, 2.5 -> 2 (half to even); 3071.5 -> 3072 is out of range.
    assert counted == {-1024: 1, 0: 2, 2: 2, 3071: 2, 7: 1}
    ints = torch.tensor([-32768, -1025, -1024, 3071, 3072, 32767], dtype=torch.int16)
    assert int(thresholded_value_histogram(ints, torch.ones(6), 0.5, LOW, HIGH, backend=backend).sum()) == 2


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ranges_far_from_the_values(backend):
    # Ranges beyond the int16 values (the C++ kernel bins small integers in int32 arithmetic).
    small = torch.tensor([-32768, 0, 32767], dtype=torch.int16)
    for low in (2**21, -2**40, 2**40):
        assert int(thresholded_value_histogram(small, torch.ones(3), 0.5, low, low + 100, backend=backend).sum()) == 0
    assert thresholded_value_histogram(small, torch.ones(3), 0.5, -2**40, -2**40 + 2**24 - 1, backend=backend).sum() == 0
    big = torch.tensor([2**31 - 1, -2**31, 2**40], dtype=torch.int64)
    counts = thresholded_value_histogram(big, torch.ones(3), 0.5, 2**31 - 3, 2**31 + 1, backend=backend)
    assert counts.tolist() == [0, 0, 1, 0, 0]
    counts = thresholded_value_histogram(big.to(torch.int32)[:2], torch.ones(2), 0.5, -2**31, -2**31 + 2, backend=backend)
    assert counts.tolist() == [1, 0, 0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_threshold_is_strict_and_exact(backend):
    # float32(0.3) is slightly above the real 0.3: it counts; a score equal to the threshold does not.
    scores = torch.tensor([0.3, 0.5, 0.25], dtype=torch.float32)
    values = torch.tensor([10, 20, 30], dtype=torch.int16)
    counts = thresholded_value_histogram(values, scores, 0.3, 0, 40, backend=backend)
    assert counts[10] == 1 and counts[20] == 1 and counts[30] == 0
    counts = thresholded_value_histogram(values, scores, 0.5, 0, 40, backend=backend)
    assert int(counts.sum()) == 0


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_one_bin_and_unbalanced(backend):
    # All elements in one bin across thread ranges: the private histograms merge into one counter.
    values = torch.full((3, 20000), -1024, dtype=torch.int16)
    values[1, ::7] = 40
    scores = torch.ones(3, 20000)
    counts = thresholded_value_histogram(values, scores, 0.5, LOW, HIGH, batch_dims=1, backend=backend)
    assert int(counts[1, 40 - LOW]) == len(range(0, 20000, 7))
    assert int(counts[:, 0].sum()) == 60000 - len(range(0, 20000, 7))
    single = thresholded_value_histogram(values, scores, 0.5, -1024, -1024, backend=backend)
    assert single.shape == (1,) and int(single[0]) == 60000 - len(range(0, 20000, 7))


def test_bad_arguments():
    values, scores = _hu((2, 5), torch.int16), torch.rand(2, 5)
    with pytest.raises(TypeError, match="values must be a torch.Tensor"):
        thresholded_value_histogram(values.tolist(), scores, 0.5, LOW, HIGH)
    with pytest.raises(TypeError, match="scores must have a floating dtype, got torch.int64"):
        thresholded_value_histogram(values, scores.long(), 0.5, LOW, HIGH)
    with pytest.raises(TypeError, match="values must be an integer or floating"):
        thresholded_value_histogram(values > 0, scores, 0.5, LOW, HIGH)
    with pytest.raises(ValueError, match=r"scores must have the shape of values \(2, 5\), got \(2, 4\)"):
        thresholded_value_histogram(values, scores[:, :4], 0.5, LOW, HIGH)
    with pytest.raises(ValueError, match=r"scores must have the shape of values \(2, 5\), got \(1, 2, 5\)"):
        thresholded_value_histogram(values, scores[None], 0.5, LOW, HIGH)
    with pytest.raises(ValueError, match="low <= high"):
        thresholded_value_histogram(values, scores, 0.5, 10, 9)
    with pytest.raises(ValueError, match="bins"):
        thresholded_value_histogram(values, scores, 0.5, 0, 1 << 30)
    with pytest.raises(TypeError, match="low must be an int"):
        thresholded_value_histogram(values, scores, 0.5, -1024.0, HIGH)
    with pytest.raises(TypeError, match="threshold must be a real number"):
        thresholded_value_histogram(values, scores, "0.5", LOW, HIGH)
    with pytest.raises(ValueError, match="batch_dims must be 0 or 1"):
        thresholded_value_histogram(values, scores, 0.5, LOW, HIGH, batch_dims=2)
    with pytest.raises(ValueError, match="batch dim"):
        thresholded_value_histogram(values[0, 0], scores[0, 0], 0.5, LOW, HIGH, batch_dims=1)
    with pytest.raises(ValueError, match="backend must be one of"):
        thresholded_value_histogram(values, scores, 0.5, LOW, HIGH, backend="gpu")


def test_torch_compile():
    values, scores = _hu((2, 8, 8), torch.int16), torch.rand(2, 8, 8)

    def f(v, s):
        return thresholded_value_histogram(v, s, 0.5, LOW, HIGH, batch_dims=1).sum(0) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    assert torch.equal(compiled(values, scores), f(values, scores))


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_values_near_2_62_are_binned_as_integers(backend):
    # doubles cannot tell 2**62 - 1 from 2**62: the bin must come from an integer comparison
    low = 2**62 - 1
    values = torch.tensor([2.0**62, 2.0**62 + 1024, 2.0**62 - 1024, float("nan")], dtype=torch.float64)
    counts = thresholded_value_histogram(values, torch.ones(4), 0.5, low, low + 2, backend=backend)
    assert counts.tolist() == [0, 1, 0]
    ints = torch.tensor([2**62, 2**62 + 1, 2**62 - 2], dtype=torch.int64)
    assert thresholded_value_histogram(ints, torch.ones(3), 0.5, low, low + 2, backend=backend).tolist() == [0, 1, 1]
