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


@pytest.mark.parametrize("bad", [-1, 1.0, True, "0"])
def test_bad_background_id(bad):
    with pytest.raises(ma.AttributionInputError, match="background_id must be None or an int >= 0, got"):
        ma.FeatureAblation(CountingModel()).attribute(torch.randn(1, 4, 4, 4), target=0,
                                                      feature_mask=_superpixels(), background_id=bad)
