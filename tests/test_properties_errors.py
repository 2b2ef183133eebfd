"""Property-based bad-input tests (Hypothesis): drawn bad arguments raise the documented error
class with a message naming the argument, on every backend, before any output is produced."""
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mmxai_fast import ops
from helpers import HAVE_TRITON

BACKENDS = ["reference", "cpu", pytest.param("triton", marks=[
    pytest.mark.triton, pytest.mark.skipif(not HAVE_TRITON, reason="triton not installed")])]
BAD = settings(max_examples=25, deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])

non_finite = st.sampled_from([math.nan, math.inf, -math.inf])


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(num_features=st.integers(1, 5), bad_id=st.one_of(st.integers(-2**40, -1), st.integers(5, 2**40)))
def test_perturb_ids_out_of_range(backend, num_features, bad_id):
    mask = torch.zeros(6, dtype=torch.int64)
    mask[3] = bad_id if bad_id < 0 else bad_id + num_features
    keep = torch.ones(2, num_features, dtype=torch.bool)
    with pytest.raises(ValueError, match=rf"feature_mask ids must be in \[0, {num_features}\)"):
        ops.perturb(torch.zeros(6), mask, keep, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(bad=st.one_of(st.floats(0.1, 5.9).filter(lambda v: v != int(v)), st.just(True)))
def test_occlusion_fractional_or_bool_window_ids(backend, bad):
    windows = ops.OcclusionWindows((6,), (2,), 1)
    with pytest.raises(TypeError, match=r"window_ids\[1\] must be an int"):
        ops.occlusion_batch(torch.zeros(6), windows, [0, bad], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(bad=st.one_of(st.integers(-2**40, -1), st.integers(5, 2**40)))
def test_occlusion_window_ids_out_of_range(backend, bad):
    windows = ops.OcclusionWindows((6,), (2,), 1)
    with pytest.raises(ValueError, match=r"window_ids must be in \[0, 5\)"):
        ops.occlusion_batch(torch.zeros(6), windows, torch.tensor([0, bad]), backend=backend)


def test_occlusion_window_ids_on_another_device():
    windows = ops.OcclusionWindows((6,), (2,), 1)
    with pytest.raises(ValueError, match="window_ids must be on the device of x"):
        ops.occlusion_batch(torch.zeros(6), windows, torch.tensor([0, 1], device="meta"))


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(start=st.integers(0, 3), length=st.integers(2, 5), shift=st.integers(-3, 3))
def test_shapley_accumulate_overlapping_buffers(backend, start, length, shift):
    """Any two views of one storage whose bytes intersect are rejected, partial overlap included."""
    storage = torch.zeros(16, 2)
    other = start + shift
    if other < 0 or other + length > 16 or abs(shift) >= length:
        return  # disjoint or out of bounds: nothing to reject
    outputs = torch.randn(2, length + 1, 2)
    perms = ops.random_permutations(2, length)
    with pytest.raises(ValueError, match="must not overlap"):
        ops.shapley_accumulate(outputs, perms, storage[start:start + length], storage[other:other + length],
                               backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(level=st.one_of(non_finite, st.floats(1e31, 1e308), st.just(40.0)),
       width=st.one_of(non_finite, st.floats(1e31, 1e308), st.floats(0, 1e-31), st.floats(-1e6, 0)))
def test_hu_window_bad_windows(backend, level, width):
    with pytest.raises(ValueError, match="HUWindow (level and width|level|width) must be"):
        ops.hu_window(torch.zeros(4, dtype=torch.int16), [(level, width)], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(k=st.integers(1, 4))
def test_vq_nearest_without_a_finite_codeword(backend, k):
    codebook = torch.full((k, 3), math.nan)
    with pytest.raises(ValueError, match="codebook must hold at least one finite codeword"):
        ops.vq_nearest(torch.zeros(2, 3), codebook, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
@BAD
@given(bad=st.one_of(st.integers(-2**40, -1), st.integers(4, 2**40)))
def test_codeword_histogram_index_out_of_range(backend, bad):
    with pytest.raises(ValueError, match=r"indices must be in \[0, 4\)"):
        ops.codeword_histogram(torch.tensor([0, bad]), 4, backend=backend)


@BAD
@given(compactness=st.one_of(non_finite, st.floats(0, 9e-11), st.floats(1.1e10, 1e300), st.floats(-1e9, 0)))
def test_slic_bad_compactness(compactness):
    with pytest.raises(ValueError, match="compactness must be a finite number in"):
        ops.slic(torch.rand(4, 5, 3), compactness=compactness, channel_axis=None)


@BAD
@given(threshold=st.just(math.nan), backend=st.sampled_from(["reference", "cpu"]))
def test_thresholded_value_histogram_nan_threshold(threshold, backend):
    with pytest.raises(ValueError, match="threshold must not be NaN"):
        ops.thresholded_value_histogram(torch.zeros(3), torch.ones(3), threshold, 0, 2, backend=backend)
