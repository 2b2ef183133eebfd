"""patch_captum / unpatch_captum: unmodified Captum code runs on the engine."""
import importlib
from unittest import mock

import captum.attr
import pytest
import torch

import mmxai_fast.attr as ma
import mmxai_fast.attr._perturbers as occ_module
from mmxai_fast.attr import patch_captum, unpatch_captum

NAMES = ["FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValues"]
ORIGINALS = {name: getattr(captum.attr, name) for name in NAMES}
CORE = {name: importlib.import_module(mod) for name, mod in [
    ("FeatureAblation", "captum.attr._core.feature_ablation"), ("Occlusion", "captum.attr._core.occlusion"),
    ("ShapleyValueSampling", "captum.attr._core.shapley_value"),
    ("ShapleyValues", "captum.attr._core.shapley_value")]}
MASK = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]]).unsqueeze(0)
CORE_ORIGINALS = {name: vars(CORE[name])[name] for name in NAMES}


@pytest.fixture(autouse=True)
def _always_unpatch():
    yield
    unpatch_captum()


def _assert_original():
    for name in NAMES:
        assert getattr(captum.attr, name) is ORIGINALS[name]
        assert vars(CORE[name])[name] is CORE_ORIGINALS[name]


def pipeline(model, x):
    """Written against Captum only: looks the classes up at call time."""
    from captum.attr import FeatureAblation, Occlusion, ShapleyValueSampling
    fa = FeatureAblation(model).attribute(x, target=1, perturbations_per_eval=3)
    occ = captum.attr.Occlusion(model).attribute(x, sliding_window_shapes=(2, 2), strides=1, target=0)
    svs = ShapleyValueSampling(model).attribute(x, target=2, n_samples=2,
                                                feature_mask=MASK)
    return fa, occ, svs, (FeatureAblation, Occlusion, ShapleyValueSampling)


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).eval()


def test_patch_swaps_classes_and_unpatch_restores():
    patch_captum()
    from captum.attr import FeatureAblation, Occlusion, ShapleyValues
    assert FeatureAblation is ma.FeatureAblation and Occlusion is ma.Occlusion
    assert ShapleyValues is ma.ShapleyValues and captum.attr.ShapleyValueSampling is ma.ShapleyValueSampling
    from captum.attr._core.occlusion import Occlusion as core_occlusion
    from captum.attr._core.feature_ablation import FeatureAblation as core_ablation
    assert core_occlusion is ma.Occlusion and core_ablation is ma.FeatureAblation
    patch_captum()  # idempotent
    unpatch_captum()
    _assert_original()
    unpatch_captum()  # no-op
    _assert_original()


def test_pipeline_identical_and_on_engine(model):
    x = torch.randn(3, 4, 4)
    torch.manual_seed(5)
    expected = pipeline(model, x)
    assert expected[3] == tuple(ORIGINALS[n] for n in ("FeatureAblation", "Occlusion", "ShapleyValueSampling"))
    # the coalition perturber, not the perturb kernel: batches this small are built with torch.where
    perturber_cls = occ_module.CoalitionPerturber
    with mock.patch.object(perturber_cls, "__call__", autospec=True,
                           side_effect=perturber_cls.__call__) as perturb_spy, \
            mock.patch.object(occ_module, "occlusion_batch", wraps=occ_module.occlusion_batch) as occ_spy:
        with patch_captum():
            torch.manual_seed(5)
            got = pipeline(model, x)
    assert got[3] == (ma.FeatureAblation, ma.Occlusion, ma.ShapleyValueSampling)
    assert perturb_spy.call_count > 0 and occ_spy.call_count > 0
    for a, b in zip(got[:3], expected[:3]):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    _assert_original()


def test_captum_classes_still_work_while_patched(model):
    x = torch.randn(2, 4, 4)
    mask = MASK
    expected = ORIGINALS["ShapleyValues"](model).attribute(x, target=0, feature_mask=mask)
    with patch_captum():
        theirs = ORIGINALS["ShapleyValues"](model).attribute(x, target=0, feature_mask=mask)
        ours = captum.attr.ShapleyValues(model).attribute(x, target=0, feature_mask=mask)
        perm = captum.attr.FeaturePermutation(model)  # Captum subclass of FeatureAblation still builds
    assert isinstance(perm, ORIGINALS["FeatureAblation"])
    torch.testing.assert_close(theirs, expected)
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-4)


def test_context_manager_restores_on_exception():
    with pytest.raises(RuntimeError, match="boom"):
        with patch_captum() as handle:
            assert captum.attr.Occlusion is ma.Occlusion and handle is not None
            raise RuntimeError("boom")
    _assert_original()
