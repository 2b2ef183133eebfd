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


SEVEN = [FeatureAblation, Occlusion, ShapleyValueSampling, ShapleyValues, FeaturePermutation, Lime, KernelShap]


def _bad(t, kind):
    return t.to_sparse() if kind == "sparse" else t.to("meta")


@pytest.mark.parametrize("kind", ["sparse", "meta"])
@pytest.mark.parametrize("cls,arg", [(c, a) for c in SEVEN for a in ("inputs", "baselines", "feature_mask")
                                     if (c, a) not in ((FeaturePermutation, "baselines"), (Occlusion, "feature_mask"))],
                         ids=str)
def test_sparse_and_meta_tensors_rejected_before_any_call(cls, arg, kind):
    lin, calls = torch.nn.Linear(8, 1), []
    x, mask = torch.randn(3, 8), torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    kw = dict(inputs=x, target=0)
    kw.update(dict(sliding_window_shapes=(2,)) if cls is Occlusion else dict(feature_mask=mask))
    if cls in (Lime, KernelShap):
        kw["n_samples"] = 10
    kw[arg] = _bad({"inputs": x, "baselines": torch.zeros(1, 8), "feature_mask": mask}[arg], kind)
    with pytest.raises(AttributionInputError, match=rf"^{arg}(\[0\])? must be a dense tensor .*, got a "):
        cls(lambda z: calls.append(1) or lin(z)).attribute(**kw)
    assert not calls


def test_require_dense_uses_callers_error():
    from mmxai_fast._validation import require_dense
    with pytest.raises(TypeError, match="x must be a dense tensor .* got a torch.sparse_coo tensor"):
        require_dense(torch.eye(2).to_sparse(), "x", TypeError)
    require_dense(torch.eye(2), "x")


@pytest.mark.parametrize("kw", [dict(target=1), dict(target=1, feature_mask=torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])),
                                dict(), dict(target=2, baselines=0.5)], ids=["target", "mask", "plain", "baseline"])
def test_feature_ablation_empty_batch_like_captum(kw):
    lin = torch.nn.Linear(8, 3)
    x = torch.randn(0, 8)
    want = ca.FeatureAblation(lin).attribute(x, **kw)
    got = FeatureAblation(lin).attribute(x, **kw)
    assert got.shape == want.shape == (0, 8) and got.dtype == want.dtype


def test_feature_ablation_empty_batch_tuple_like_captum():
    model = lambda a, b: a.flatten(1).sum(1) + b.sum(1)  # noqa: E731
    x = (torch.randn(0, 2, 3), torch.randn(0, 4))
    want = ca.FeatureAblation(model).attribute(x)
    got = FeatureAblation(model).attribute(x)
    assert [g.shape for g in got] == [w.shape for w in want] == [(0, 2, 3), (0, 4)]


def test_feature_permutation_background_gets_no_calls_and_zero():
    lin, calls = torch.nn.Linear(8, 1), []
    model = lambda z: calls.append(1) or lin(z)  # noqa: E731
    x, mask = torch.randn(5, 8), torch.tensor([[0, 0, 1, 1, 2, 2, 3, 3]])
    torch.manual_seed(0)
    plain = FeaturePermutation(model).attribute(x, feature_mask=mask)
    plain_calls = len(calls)
    calls.clear()
    torch.manual_seed(0)
    out = FeaturePermutation(model).attribute(x, feature_mask=mask, background_id=0)
    assert (plain_calls, len(calls)) == (5, 4)  # initial + one per feature; the background: none
    assert (out[:, :2] == 0).all() and (out[:, 2:].abs().sum(0) > 0).all() and (plain[:, :2].abs().sum() > 0)
