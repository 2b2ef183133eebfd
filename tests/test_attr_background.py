"""A declared background id is no feature: no model calls for it, attribution 0 there; without
one, Captum's semantics (the background is a feature)."""
import captum.attr as captum_attr
import pytest
import torch

import mmxai_fast.attr as ma


class CountingModel(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0
        self.weight = torch.linspace(-1, 1, 64).reshape(1, 4, 4, 4)

    def forward(self, x):
        self.calls += 1
        return (x * self.weight).flatten(1).sum(1, keepdim=True) ** 2


def _superpixels():
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    mask[0, 1:, :, :] = (torch.arange(48) % 14 + 1).reshape(3, 4, 4)  # ids 1..14
    return mask  # id 0: background (one slab)


def test_feature_ablation_calls_with_and_without_background():
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    model = CountingModel()
    plain = ma.FeatureAblation(model).attribute(x, target=0, feature_mask=mask)
    assert model.calls == 16  # the input + 15 features (background included, as Captum)
    model.calls = 0
    declared = ma.FeatureAblation(model).attribute(x, target=0, feature_mask=mask, background_id=0)
    assert model.calls == 15  # the input + 14 superpixels
    assert bool((declared[mask.expand_as(x) == 0] == 0).all())
    fg = mask.expand_as(x) != 0
    torch.testing.assert_close(declared[fg], plain[fg])
    torch.testing.assert_close(plain, captum_attr.FeatureAblation(CountingModel()).attribute(
        x, target=0, feature_mask=mask))


def test_shapley_background_is_never_permuted():
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    model = CountingModel()
    out = ma.ShapleyValueSampling(model).attribute(x, target=0, feature_mask=mask, n_samples=3, background_id=0)
    assert model.calls == 2 + 3 * 13  # baseline, full input, prefixes 1 .. 13 of 3 permutations of 14
    assert bool((out[mask.expand_as(x) == 0] == 0).all())
    # efficiency: the attributions of the 14 superpixels add up to f(x) - f(baseline with background kept)
    keep_bg = torch.where(mask.expand_as(x) == 0, x, torch.zeros_like(x))
    total = model(x) - model(keep_bg)
    per_feature = torch.stack([out[mask.expand_as(x) == k][0] for k in range(1, 15)])
    torch.testing.assert_close(per_feature.sum(), total[0, 0], rtol=1e-4, atol=1e-4)


def test_background_id_not_in_mask_changes_nothing():
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    expected = ma.FeatureAblation(CountingModel()).attribute(x, target=0, feature_mask=mask)
    got = ma.FeatureAblation(CountingModel()).attribute(x, target=0, feature_mask=mask, background_id=99)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("cls", [ma.FeatureAblation, ma.Lime, ma.KernelShap])
@pytest.mark.parametrize("bad", [-1, 1.0, True, "0"])
def test_bad_background_id(bad, cls):
    model = CountingModel()
    with pytest.raises(ma.AttributionInputError, match=r"^background_id must be None or an int >= 0, got"):
        cls(model).attribute(torch.randn(1, 4, 4, 4), target=0, feature_mask=_superpixels(), background_id=bad)
    assert model.calls == 0


# ---------------------------------------------------------------- Lime and KernelShap

def _merged(x, mask):
    """The background merged away: its elements join feature 1 (ids shifted to 0 .. 13) with the
    input itself as their baseline, so they never change; what a declared background means."""
    bg = mask.expand_as(x) == 0
    return torch.where(mask == 0, 0, mask - 1), torch.where(bg, x, torch.zeros_like(x)), bg


@pytest.mark.parametrize("cls", [ma.Lime, ma.KernelShap])
def test_surrogate_interpretable_features_and_calls(cls):
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    model = CountingModel()
    plain = cls(model).attribute(x, target=0, feature_mask=mask, n_samples=30, return_input_shape=False)
    assert plain.shape == (1, 15) and model.calls == 30  # Captum: the background is feature 0
    model.calls = 0
    coefs = cls(model).attribute(x, target=0, feature_mask=mask, n_samples=30, return_input_shape=False,
                                 background_id=0)
    assert coefs.shape == (1, 14) and model.calls == 30  # one sample per call, the background no column
    out = cls(model).attribute(x, target=0, feature_mask=mask, n_samples=30, background_id=0)
    assert bool((out[mask.expand_as(x) == 0] == 0).all()) and out.abs().max() > 0


def test_lime_background_is_captum_with_the_background_merged_away():
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    merged, kept_baseline, bg = _merged(x, mask)
    torch.manual_seed(3)
    ours = ma.Lime(CountingModel()).attribute(x, target=0, feature_mask=mask, background_id=0, n_samples=40)
    torch.manual_seed(3)
    theirs = captum_attr.Lime(CountingModel()).attribute(x, target=0, feature_mask=merged, baselines=kept_baseline,
                                                         n_samples=40)
    # same Bernoulli samples and cosine weights (background in every sample), float32 outputs: 1e-4
    torch.testing.assert_close(ours[~bg], theirs[~bg], rtol=1e-4, atol=1e-4)
    assert theirs[~bg].abs().max() > 1 and bool((ours[bg] == 0).all())


@pytest.mark.parametrize("kwargs", [{}, {"similarity": "euclidean"}, {"per_example": True}])
def test_lime_background_equals_own_run_merged_away(kwargs):
    """Per-example ids (N = 2) and the euclidean kernel keep the background in every sample too."""
    from captum.attr._core.lime import get_exp_kernel_similarity_function

    n = 2 if kwargs.get("per_example") else 1
    x, mask = torch.randn(n, 4, 4, 4), _superpixels()
    merged, kept_baseline, bg = _merged(x, mask)
    init = {"similarity_func": get_exp_kernel_similarity_function(kwargs.get("similarity", "cosine"), 2.0)}
    torch.manual_seed(5)
    ours = ma.Lime(CountingModel(), **init).attribute(x, target=0, feature_mask=mask, background_id=0, n_samples=30,
                                                      perturbations_per_eval=4)
    torch.manual_seed(5)
    ref = ma.Lime(CountingModel(), **init).attribute(x, target=0, feature_mask=merged, baselines=kept_baseline,
                                                     n_samples=30, perturbations_per_eval=4)
    torch.testing.assert_close(ours[~bg], ref[~bg], rtol=1e-4, atol=1e-4)
    assert ref[~bg].abs().max() > 1 and bool((ours[bg] == 0).all())


@pytest.mark.parametrize("kwargs", [{}, {"paired": True}])
def test_kernel_shap_background_equals_merged_away(kwargs):
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    merged, kept_baseline, bg = _merged(x, mask)
    torch.manual_seed(7)
    ours = ma.KernelShap(CountingModel()).attribute(x, target=0, feature_mask=mask, background_id=0, n_samples=40,
                                                    **kwargs)
    torch.manual_seed(7)
    ref = ma.KernelShap(CountingModel()).attribute(x, target=0, feature_mask=merged, baselines=kept_baseline,
                                                   n_samples=40, **kwargs)
    torch.testing.assert_close(ours[~bg], ref[~bg], rtol=1e-4, atol=1e-4)
    assert ref[~bg].abs().max() > 1 and bool((ours[bg] == 0).all())


def test_kernel_shap_exact_background_halves_calls_and_gives_shapley_values():
    x = torch.randn(1, 4, 4, 4)
    mask = torch.zeros(1, 4, 4, 4, dtype=torch.int64)
    mask[0, 1:] = (torch.arange(48) % 5 + 1).reshape(3, 4, 4)  # background 0, superpixels 1..5
    model = CountingModel()
    ma.KernelShap(model).attribute(x, target=0, feature_mask=mask, exact=True)
    assert model.calls == 2 ** 6  # every coalition of 6 features
    model.calls = 0
    ours = ma.KernelShap(model).attribute(x, target=0, feature_mask=mask, exact=True, background_id=0)
    assert model.calls == 2 ** 5  # the background is in none of them: half the calls
    merged, kept_baseline, bg = _merged(x, mask)
    exact = ma.ShapleyValues(CountingModel()).attribute(x, target=0, feature_mask=merged, baselines=kept_baseline)
    torch.testing.assert_close(ours[~bg], exact[~bg], rtol=1e-4, atol=1e-3)
    assert bool((ours[bg] == 0).all())


@pytest.mark.parametrize("cls", [ma.Lime, ma.KernelShap])
def test_surrogate_background_outside_the_ids_changes_nothing(cls):
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    torch.manual_seed(1)
    expected = cls(CountingModel()).attribute(x, target=0, feature_mask=mask, n_samples=20)
    torch.manual_seed(1)
    got = cls(CountingModel()).attribute(x, target=0, feature_mask=mask, n_samples=20, background_id=99)
    torch.testing.assert_close(got, expected)


def test_surrogate_background_with_shifted_ids():
    """Captum shifts ids to start at 0; the background is named by its id in the caller's mask."""
    x, mask = torch.randn(1, 4, 4, 4), _superpixels() + 5  # background 5, superpixels 6..19
    torch.manual_seed(2)
    got = ma.Lime(CountingModel()).attribute(x, target=0, feature_mask=mask, n_samples=20, background_id=5)
    torch.manual_seed(2)
    expected = ma.Lime(CountingModel()).attribute(x, target=0, feature_mask=mask - 5, n_samples=20, background_id=0)
    torch.testing.assert_close(got, expected)
    assert bool((got[mask.expand_as(x) == 5] == 0).all())


def test_surrogate_background_errors():
    x, mask = torch.randn(1, 4, 4, 4), _superpixels()
    with pytest.raises(ma.AttributionInputError, match=r"^background_id must be None with a custom perturb_func"):
        ma.Lime(CountingModel(), similarity_func=lambda *a, **k: 1.0).attribute(
            x, target=0, feature_mask=mask, background_id=0)
    with pytest.raises(ma.AttributionInputError, match="^KernelShap needs at least 2 features, got 1$"):
        ma.KernelShap(CountingModel()).attribute(x, target=0, feature_mask=(mask > 0).long(), background_id=0)
    with pytest.raises(ma.AttributionInputError, match="^feature_mask must hold a feature besides background_id"):
        ma.Lime(CountingModel()).attribute(x, target=0, feature_mask=torch.zeros_like(mask), background_id=0)


@pytest.mark.parametrize("method", ["Lime", "KernelShap"])
def test_pipeline_declares_superpixel_0_to_the_surrogates(tmp_path, monkeypatch, method):
    from mmxai_fast.pipeline import Superpixels, explain, load_case
    from pipeline_data import small_model, write_case

    import functools

    cls = getattr(ma, method)
    seen, original = [], cls.attribute

    @functools.wraps(original)  # the same signature: explain() checks method_kwargs against it
    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("background_id"))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(cls, "attribute", spy)
    paths, roi = write_case(tmp_path, shape=(12, 10, 8))
    case = load_case(paths, roi=roi, normalize="zscore")
    exp = explain(small_model(), case, method=method, superpixels=Superpixels(n_segments=4),
                  method_kwargs={"n_samples": 8}, show_progress=False)
    assert seen == [0] and int(exp.feature_mask.min()) == 0  # superpixel 0 (outside the head) is no feature
    assert bool((exp.attributions[:, ~case.foreground] == 0).all())
