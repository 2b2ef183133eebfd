"""``NoiseTunnel`` over every perturbation class (not an upstream file).

Upstream's ``test_simple_ablation_int_to_int_nt`` and ``test_multi_input_ablation_with_mask_nt``
(test_feature_ablation.py) showed that ``NoiseTunnel`` calls ``attribute.__wrapped__``, which
Captum's classes get from ``@log_usage``; this extends that check to all seven classes.
"""
import pytest
import torch
from captum.attr import NoiseTunnel

import mmxai_fast.attr as ma

from captum.testing.helpers.basic_models import BasicModel_MultiLayer

CASES = [
    (ma.FeatureAblation, {}),
    (ma.Occlusion, {"sliding_window_shapes": (1,)}),
    (ma.ShapleyValueSampling, {"n_samples": 2}),
    (ma.ShapleyValues, {}),
    (ma.FeaturePermutation, {}),
    (ma.Lime, {"n_samples": 20}),
    (ma.KernelShap, {"n_samples": 20}),
]


@pytest.mark.parametrize("cls, kwargs", CASES)
def test_noise_tunnel_runs_the_class(cls, kwargs):
    inp = torch.tensor([[20.0, 50.0, 30.0], [2.0, 10.0, 3.0]])
    attr = NoiseTunnel(cls(BasicModel_MultiLayer())).attribute(
        inp, nt_samples=2, stdevs=1e-10, target=0, **kwargs)
    assert attr.shape == inp.shape and bool(torch.isfinite(attr).all())
