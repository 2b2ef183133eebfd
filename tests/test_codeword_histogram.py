import pytest
import torch

from mmxai_fast.ops.codeword_histogram import codeword_histogram, codeword_histogram_reference
from helpers import CPU_BACKENDS, non_contiguous

ALL_BACKENDS = ["reference"] + CPU_BACKENDS


def _bincount_per_batch(indices, k, batch_dims):
    if batch_dims == 0:
        return torch.bincount(indices.reshape(-1).long(), minlength=k)
    rows = [torch.bincount(indices[b].reshape(-1).long(), minlength=k) for b in range(indices.shape[0])]
    return torch.stack(rows) if rows else torch.zeros((0, k), dtype=torch.int64)


HIST_SHAPES = [(1,), (7,), (5, 123, 123), (3, 17, 9, 11), (4, 6, 5, 7), (2, 0, 3), (0, 5)]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", HIST_SHAPES)
@pytest.mark.parametrize("batch_dims", [0, 1])
def test_histogram_exact_counts(backend, shape, batch_dims):
    k = 37
    indices = torch.randint(0, k, shape)
    counts = codeword_histogram(indices, k, batch_dims=batch_dims, backend=backend)
    expected = _bincount_per_batch(indices, k, batch_dims)
    assert counts.dtype == torch.int64 and counts.shape == expected.shape
    assert torch.equal(counts, expected)
    assert int(counts.sum()) == indices.numel()


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int32, torch.uint8, torch.int16])
def test_histogram_index_dtypes_and_views(backend, dtype):
    indices = torch.randint(0, 200, (6, 9, 10)).to(dtype)
    view = non_contiguous(indices).transpose(1, 2)
    for batch_dims in (0, 1):
        got = codeword_histogram(view, 200, batch_dims=batch_dims, backend=backend)
        assert torch.equal(got, _bincount_per_batch(view, 200, batch_dims))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_histogram_unbalanced_bins(backend):
    # Every element in one bin: the threads' local histograms all merge into the same counter.
    indices = torch.full((3, 20000), 5, dtype=torch.int64)
    indices[1, ::7] = 0
    counts = codeword_histogram(indices, 8, batch_dims=1, backend=backend)
    assert torch.equal(counts, _bincount_per_batch(indices, 8, 1))
    assert int(codeword_histogram(indices, 8, backend=backend)[5]) == 60000 - len(range(0, 20000, 7))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_histogram_out_of_range_is_an_error(backend):
    indices = torch.randint(0, 10, (2, 30))
    indices[1, 4] = 10
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\).*max 10"):
        codeword_histogram(indices, 10, backend=backend)
    indices[1, 4] = -1
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\).*min -1"):
        codeword_histogram(indices, 10, batch_dims=1, backend=backend)


def test_histogram_bad_arguments():
    indices = torch.randint(0, 4, (3, 5))
    with pytest.raises(TypeError, match="indices must be a torch.Tensor"):
        codeword_histogram(indices.tolist(), 4)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        codeword_histogram(indices.float(), 4)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        codeword_histogram(indices > 1, 4)
    with pytest.raises(ValueError, match="num_codewords must be an int >= 1"):
        codeword_histogram(indices, 0)
    with pytest.raises(ValueError, match="batch_dims must be 0 or 1"):
        codeword_histogram(indices, 4, batch_dims=2)
    with pytest.raises(ValueError, match="batch dim"):
        codeword_histogram(torch.tensor(2), 4, batch_dims=1)


def test_histogram_reference_matches_bincount():
    indices = torch.randint(0, 11, (4, 3, 5))
    assert torch.equal(codeword_histogram_reference(indices, 11), torch.bincount(indices.flatten(), minlength=11))
    assert torch.equal(codeword_histogram_reference(indices, 11, 1), _bincount_per_batch(indices, 11, 1))


