"""The same bad input gives the same error class and message shape from every attribution class,
before any perturbed model call."""
import pytest
import torch

import mmxai_fast.attr as ma


class Counting(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x.flatten(1)[:, :3] * 2.0  # [N, 3]


def _call(cls, model, **kwargs):
    x = torch.randn(2, 2, 4)
    if cls is ma.Occlusion:
        kwargs.pop("feature_mask", None)
        return cls(model).attribute(x, sliding_window_shapes=(1, 2), **kwargs)
    if cls in (ma.Lime, ma.KernelShap, ma.ShapleyValueSampling):
        kwargs.setdefault("n_samples", 4)
    return cls(model).attribute(x, **kwargs)


MASK_CLASSES = [ma.FeatureAblation, ma.ShapleyValueSampling, ma.ShapleyValues, ma.FeaturePermutation, ma.Lime,
                ma.KernelShap]
ALL_CLASSES = MASK_CLASSES + [ma.Occlusion]
GOOD_MASK = torch.tensor([[[0, 0, 1, 1], [2, 2, 3, 3]]])


@pytest.mark.parametrize("cls", MASK_CLASSES)
def test_float_feature_mask(cls):
    model = Counting()
    if cls in (ma.FeatureAblation, ma.FeaturePermutation):  # whole-number float ids are ids, as in Captum 0.9
        with pytest.raises(ma.AttributionInputError, match=r"^feature_mask\[0\] must hold whole-number ids, got 0.5$"):
            _call(cls, model, target=0, feature_mask=GOOD_MASK.float() + 0.5)
    else:
        with pytest.raises(ma.AttributionInputError,
                           match=r"^feature_mask\[0\] must be an integer tensor, got torch.float32$"):
            _call(cls, model, target=0, feature_mask=GOOD_MASK.float())
    assert model.calls == 0


@pytest.mark.parametrize("cls", MASK_CLASSES)
def test_negative_feature_mask_ids(cls):
    model = Counting()
    with pytest.raises(ma.AttributionInputError, match=r"^feature_mask\[0\] ids must be >= 0, got min -1$"):
        _call(cls, model, target=0, feature_mask=GOOD_MASK - 1)
    assert model.calls == 0


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_target_out_of_range(cls):
    model = Counting()
    with pytest.raises(ma.AttributionInputError, match=r"^target 7 does not index forward_func's output: with 2 "
                                                       r"examples it has shape \(2, 3\)"):
        _call(cls, model, target=7, feature_mask=GOOD_MASK)
    assert model.calls == 1  # only the first (unperturbed) call, which gives the output's shape


@pytest.mark.parametrize("cls", ALL_CLASSES)
def test_model_returning_a_tuple(cls):
    def model(x):
        return x.sum(1), x.sum(1)

    with pytest.raises(ma.AttributionInputError, match=r"^forward_func must return a tensor, int or float, got tuple$"):
        _call(cls, model, target=0, feature_mask=GOOD_MASK)
