"""Reliability of the attribution classes on hostile inputs (issue 15): wide sparse ids,
sparse/meta tensors, empty batches, a declared background on every class."""
import time
import warnings

import captum.attr as ca
import pytest
import torch

from mmxai_fast.attr import (AttributionInputError, FeatureAblation, FeaturePermutation, KernelShap, Lime,
                             Occlusion, ShapleyValues, ShapleyValueSampling)

warnings.filterwarnings("ignore", category=UserWarning)


def _model():
    torch.manual_seed(0)
    lin = torch.nn.Linear(8, 3)
    return lambda x: torch.tanh(lin(x)) ** 2


GAPPED = torch.tensor([[0, 0, 1, 1, 2, 2, 5, 5]])
WIDE = torch.tensor([[0, 0, 1, 1, 2, 2, 10 ** 6, 10 ** 6]])
HUGE = torch.tensor([[0, 0, 1, 1, 2, 2, 2 ** 40, 2 ** 40]])


@pytest.mark.parametrize("ours,theirs,kw", [(ShapleyValueSampling, ca.ShapleyValueSampling, dict(n_samples=7)),
                                            (ShapleyValues, ca.ShapleyValues, {})])
def test_shapley_gapped_ids_match_captum(ours, theirs, kw):
    f, x = _model(), torch.randn(2, 8)
    torch.manual_seed(3)
    got = ours(f).attribute(x, target=1, feature_mask=GAPPED, **kw)
    torch.manual_seed(3)
    want = theirs(f).attribute(x, target=1, feature_mask=GAPPED, **kw)
    torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


def _shapley_counts(mask, **kw):
    calls = []
    f = _model()

    def model(x):
        calls.append(x.shape[0])
        return f(x)

    start = time.perf_counter()
    out = ShapleyValueSampling(model).attribute(torch.randn(2, 8), target=1, feature_mask=mask, **kw)
    return out, len(calls), time.perf_counter() - start


def test_shapley_wide_ids_finish_with_calls_of_present_ids_only():
    torch.manual_seed(5)
    out, calls, seconds = _shapley_counts(WIDE, n_samples=3)
    # baseline + full input + 3 permutations x 3 inner prefixes of the 4 present ids
    assert calls == 2 + 3 * 3
    assert seconds < 30 and out.shape == (2, 8)
    torch.manual_seed(5)
    exact = ShapleyValues(_model()).attribute(torch.randn(2, 8), target=1, feature_mask=WIDE)
    assert exact.shape == (2, 8)


def test_shapley_huge_id_is_refused_before_allocating():
    with pytest.raises(AttributionInputError, match=r"feature_mask ids must be at most .* got id 1099511627776.*GiB"):
        _shapley_counts(HUGE, n_samples=3)
    x = torch.randn(2, 8)
    out = ShapleyValues(_model()).attribute(x, target=1, feature_mask=HUGE)  # absent ids: null players
    want = ca.ShapleyValues(_model()).attribute(x, target=1, feature_mask=torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]]))
    torch.testing.assert_close(out, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("cls", [Lime, KernelShap])
@pytest.mark.parametrize("mask", [WIDE, HUGE], ids=["1e6", "2^40"])
def test_lime_wide_ids_refused_clearly(cls, mask):
    calls = []
    f = _model()
    start = time.perf_counter()
    with pytest.raises(AttributionInputError, match=r"feature_mask ids must be compact .* got id \d+: .* present"):
        cls(lambda x: calls.append(1) or f(x)).attribute(torch.randn(1, 8), target=1, feature_mask=mask,
                                                         n_samples=20)
    assert not calls and time.perf_counter() - start < 10


def test_lime_small_gaps_keep_captum_results():
    f, x = _model(), torch.randn(1, 8)
    torch.manual_seed(6)
    got = Lime(f).attribute(x, target=1, feature_mask=GAPPED, n_samples=30)
    torch.manual_seed(6)
    want = ca.Lime(f).attribute(x, target=1, feature_mask=GAPPED, n_samples=30)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-3)
