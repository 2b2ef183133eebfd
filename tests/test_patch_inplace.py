"""In-place patching: Captum classes imported before ``patch_captum()`` run on the engine."""
import captum.attr
import pytest
import torch
from captum.attr import FeatureAblation, KernelShap, Lime, NoiseTunnel, Occlusion, ShapleyValueSampling, ShapleyValues
from captum.attr import FeaturePermutation

import mmxai_fast
from mmxai_fast.attr import AttributionInputError

CAPTUM_CLASSES = [FeatureAblation, Occlusion, ShapleyValueSampling, ShapleyValues, FeaturePermutation, Lime,
                  KernelShap]


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Conv3d(2, 3, 3, padding=1), torch.nn.ReLU(), torch.nn.Flatten(),
                               torch.nn.Linear(3 * 6 * 6 * 6, 2)).eval()


def _case():
    x = torch.randn(1, 2, 6, 6, 6)
    mask = (torch.arange(216).reshape(1, 1, 6, 6, 6) // 27).expand(1, 2, 6, 6, 6).contiguous()
    return x, mask


def _snapshot():
    return {cls: dict(vars(cls)) for cls in CAPTUM_CLASSES} | {"captum.attr": dict(vars(captum.attr))}


def test_classes_imported_before_the_patch_run_on_the_engine():
    model, (x, mask) = _model(), _case()
    bad = mask.clone()
    bad[0, 0, 0, 0, 0] = -1
    FeatureAblation(model).attribute(x, target=0, feature_mask=bad)  # plain Captum accepts negative ids
    with mmxai_fast.patch_captum():
        for cls in (FeatureAblation, ShapleyValueSampling):
            with pytest.raises(AttributionInputError, match="feature_mask"):
                cls(model).attribute(x, target=0, feature_mask=bad)


def test_instances_created_before_the_patch_give_captum_results_on_the_engine():
    model, (x, mask) = _model(), _case()
    fa, svs = FeatureAblation(model), ShapleyValueSampling(model)
    expected_fa = fa.attribute(x, target=1, feature_mask=mask)
    torch.manual_seed(3)
    expected_svs = svs.attribute(x, target=1, feature_mask=mask, n_samples=2)
    with mmxai_fast.patch_captum():
        got_fa = fa.attribute(x, target=1, feature_mask=mask)
        torch.manual_seed(3)
        got_svs = svs.attribute(x, target=1, feature_mask=mask, n_samples=2)
        assert type(fa) is FeatureAblation  # the instance keeps its class outside the call
    torch.testing.assert_close(got_fa, expected_fa, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_svs, expected_svs, rtol=1e-5, atol=1e-6)


def test_noise_tunnel_over_a_pre_patch_instance_uses_the_engine():
    model, (x, mask) = _model(), _case()
    bad = mask.clone()
    bad[0, 0, 0, 0, 0] = -1
    tunnel = NoiseTunnel(FeatureAblation(model))
    with mmxai_fast.patch_captum():
        with pytest.raises(AttributionInputError):
            tunnel.attribute(x, nt_samples=2, target=0, feature_mask=bad)


def test_unpatch_restores_every_attribute_exactly():
    before = _snapshot()
    mmxai_fast.patch_captum(batch="auto")
    assert FeatureAblation.attribute is not before[FeatureAblation]["attribute"]
    mmxai_fast.unpatch_captum()
    after = _snapshot()
    assert before.keys() == after.keys()
    for key in before:
        assert before[key].keys() == after[key].keys(), key
        for name, value in before[key].items():
            assert after[key][name] is value, (key, name)
    ours = mmxai_fast.attr.FeatureAblation
    assert "dispatch" not in repr(ours.attribute) and not hasattr(ours.attribute.__wrapped__, "__wrapped__")


def test_user_subclasses_keep_captum_behaviour():
    class MyAblation(FeatureAblation):
        pass

    model, (x, mask) = _model(), _case()
    bad = mask.clone()
    bad[0, 0, 0, 0, 0] = -1
    with mmxai_fast.patch_captum():
        MyAblation(model).attribute(x, target=0, feature_mask=bad)  # Captum's code: no engine check
