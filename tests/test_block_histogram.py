"""The Triton histograms' block-local path (a block spans at most two rows, bins fit in
NUM_BINS: counts per block, then one atomic per touched bin) against the references; rows of 1500
are shorter than two blocks of 1024, so blocks straddle row boundaries."""
import pytest
import torch

from mmxai_fast.ops.codeword_histogram import codeword_histogram, codeword_histogram_reference
from mmxai_fast.ops.thresholded_value_histogram import (thresholded_value_histogram,
                                                        thresholded_value_histogram_reference)

pytestmark = pytest.mark.triton


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_codeword_histogram_block_path(dtype):
    g = torch.Generator().manual_seed(0)
    indices = torch.randint(0, 37, (3, 1500), generator=g).to(dtype)
    got = codeword_histogram(indices, 37, batch_dims=1, backend="triton")
    assert torch.equal(got, codeword_histogram_reference(indices, 37, batch_dims=1))


@pytest.mark.parametrize("dtype", [torch.int16, torch.float32])
def test_thresholded_value_histogram_block_path(dtype):
    g = torch.Generator().manual_seed(1)
    values = (torch.rand(3, 1500, generator=g) * 40 - 20).to(dtype)
    scores = torch.rand(3, 1500, generator=g)
    got = thresholded_value_histogram(values, scores, 0.3, -10, 12, batch_dims=1, backend="triton")
    assert torch.equal(got, thresholded_value_histogram_reference(values, scores, 0.3, -10, 12, batch_dims=1))
