import numpy as np
import pytest
import torch
from captum.attr import FeatureAblation as CaptumFeatureAblation
from captum.attr import LayerAttribution, LayerGradCam

import mmxai_fast
from mmxai_fast.pipeline import (GRADIENT_METHODS, METHODS, PERTURBATION_METHODS, Baseline, Case, Superpixels,
                                 explain, load_case, resolve_method, superpixel_mask)
from pipeline_data import ball, small_model, write_case

SP = Superpixels(n_segments=4)
FAST_KWARGS = {"ShapleyValueSampling": {"n_samples": 2}, "Lime": {"n_samples": 8}, "KernelShap": {"n_samples": 8},
               "IntegratedGradients": {"n_steps": 4}, "SmoothGrad": {"nt_samples": 2},
               "GradientShap": {"n_samples": 2}, "Occlusion": {"sliding_window_shapes": (1, 6, 5, 4)},
               "FeaturePermutation": {"permutation_batch": 3}}


class Counting(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model, self.calls = model, 0

    def forward(self, x):
        self.calls += 1
        return self.model(x)


class LinearProbe(torch.nn.Module):
    """logits = (s, -s) with s = sum(w * x): exact attributions are known."""

    def __init__(self, weight):
        super().__init__()
        self.weight = torch.nn.Parameter(weight)

    def forward(self, x):
        s = (x * self.weight).flatten(1).sum(1)
        return torch.stack([s, -s], dim=1)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    paths, roi = write_case(tmp_path_factory.mktemp("case"), shape=(12, 10, 8))
    return load_case(paths, roi=roi, normalize="zscore")


def test_method_names_and_aliases():
    assert len(PERTURBATION_METHODS) == 6 and len(GRADIENT_METHODS) == 10
    for name in METHODS:
        assert resolve_method(name) == name and resolve_method(name.lower()) == name
    assert resolve_method("shapley") == "ShapleyValueSampling"
    assert resolve_method("integrated_gradients") == "IntegratedGradients"
    assert resolve_method("ig") == "IntegratedGradients"
    assert resolve_method("GradCAM") == "LayerGradCam"
    assert resolve_method("guided-backprop") == "GuidedBackprop"
    assert resolve_method("kernel_shap") == "KernelShap"
    with pytest.raises(ValueError, match="method must be one of .*got 'gradients'"):
        resolve_method("gradients")
    assert mmxai_fast.explain is explain


@pytest.mark.parametrize("method", METHODS)
def test_every_method_on_a_multimodal_3d_case(case, method):
    model = Counting(small_model())
    exp = explain(model, case, method=method, superpixels=SP, method_kwargs=FAST_KWARGS.get(method),
                  show_progress=False)
    assert exp.method == method and exp.modalities == case.modalities
    assert exp.attributions.dtype == torch.float32 and exp.attributions.shape == case.image.shape
    assert exp.attributions.device.type == "cpu" and bool(torch.isfinite(exp.attributions).all())
    assert sum(exp.modality_importance.values()) == pytest.approx(1.0)
    assert list(exp.modality_importance) == list(case.modalities)
    assert exp.target == int(small_model()(case.image[None]).argmax())
    assert exp.stats.model_evaluations == model.calls >= 2
    assert 0 < exp.stats.model_s <= exp.stats.wall_s
    if method in PERTURBATION_METHODS:
        assert bool((exp.attributions[:, ~case.foreground] == 0).all())
    if method in PERTURBATION_METHODS[1:]:
        assert exp.feature_mask is not None and exp.feature_mask.shape == case.image.shape
    else:
        assert exp.feature_mask is None


def test_feature_ablation_matches_captum_with_the_same_mask_and_baseline(case):
    model = small_model()
    exp = explain(model, case, method="FeatureAblation", superpixels=SP, baseline=Baseline.gaussian(1),
                  target=1, show_progress=False)
    mask = superpixel_mask(case, SP)
    base = torch.where(case.foreground, Baseline.gaussian(1).tensor(case), case.image)
    ref = CaptumFeatureAblation(model).attribute(case.image[None], baselines=base[None], target=1,
                                                 feature_mask=mask[None])[0]
    torch.testing.assert_close(exp.attributions, ref, rtol=1e-4, atol=1e-6)
    assert torch.equal(exp.feature_mask, mask)


@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValueSampling", "Occlusion"])
def test_linear_model_exact_and_modality_specific(case, method):
    weight = torch.zeros((1,) + tuple(case.image.shape))
    weight[0, 1] = torch.linspace(-1, 1, case.image[1].numel()).reshape(case.image.shape[1:])
    baseline = Baseline.gaussian(5)
    kwargs = {"n_samples": 1} if method == "ShapleyValueSampling" else {}
    if method == "Occlusion":
        kwargs = {"sliding_window_shapes": (1, 1, 1, 1)}
    exp = explain(LinearProbe(weight), case, method=method, target=0, superpixels=SP, baseline=baseline,
                  method_kwargs=kwargs, show_progress=False)
    assert exp.modality_importance["t1"] == 0 and exp.modality_importance["t2"] == pytest.approx(1)
    base = torch.where(case.foreground, baseline.tensor(case), case.image)
    contribution = (weight[0] * (case.image - base)).double()
    if method == "Occlusion":  # 1-voxel windows: every voxel's own contribution
        torch.testing.assert_close(exp.attributions.double(), contribution, rtol=1e-4, atol=1e-5)
        return
    # every voxel of a superpixel carries the superpixel's total contribution
    for fid in torch.unique(exp.feature_mask[1][case.foreground]).tolist():
        inside = exp.feature_mask[1] == fid
        values = exp.attributions[1][inside].double()
        assert float(values.max() - values.min()) < 1e-4
        assert float(values[0]) == pytest.approx(float(contribution[1][inside].sum()), rel=1e-4, abs=1e-4)


def test_integrated_gradients_reference_defaults_to_zeros(case):
    weight = torch.randn((1,) + tuple(case.image.shape))
    exp = explain(LinearProbe(weight), case, method="ig", target=0, show_progress=False)
    torch.testing.assert_close(exp.attributions, (weight[0] * case.image), rtol=1e-4, atol=1e-5)


def test_gradcam_is_upsampled_trilinearly_and_shared_by_modalities(case):
    model = small_model()
    exp = explain(model, case, method="gradcam", target=1, show_progress=False)
    layer = model.features[1][0]  # last Conv3d
    cam = LayerGradCam(model, layer).attribute(case.image[None], target=1)
    expected = LayerAttribution.interpolate(cam, case.image.shape[1:], interpolate_mode="trilinear")[0, 0]
    torch.testing.assert_close(exp.attributions[0], expected)
    torch.testing.assert_close(exp.attributions[1], expected)
    assert exp.settings["layer"] == "features.1.0"
    by_name = explain(model, case, method="LayerGradCam", target=1, layer="features.0.0", show_progress=False)
    assert by_name.settings["layer"] == "features.0.0"
    assert not torch.allclose(by_name.attributions, exp.attributions)
    with pytest.raises(ValueError, match=r"layer 'head' is not a module of VGG3D; its conv layers are \['features.0.0'"):
        explain(model, case, method="gradcam", layer="head", show_progress=False)


def test_constructor_arguments_reach_the_constructor(case):
    weight = torch.randn((1,) + tuple(case.image.shape))
    plain = explain(LinearProbe(weight), case, method="ig", target=0, method_kwargs={"n_steps": 4}, show_progress=False)
    global_ig = explain(LinearProbe(weight), case, method="ig", target=0, show_progress=False,
                        method_kwargs={"n_steps": 4, "multiply_by_inputs": False})
    # without the multiplier IG is the mean gradient: the weight itself, not weight * input
    torch.testing.assert_close(global_ig.attributions, weight[0], rtol=1e-4, atol=1e-5)
    assert not torch.allclose(plain.attributions, global_ig.attributions)


def test_target_validation_and_choice(case):
    model = small_model()
    logits = model(case.image[None])[0]
    exp = explain(model, case, method="saliency", show_progress=False)
    assert exp.target == int(logits.argmax())
    other = 1 - exp.target
    assert explain(model, case, method="saliency", target=other, show_progress=False).target == other
    with pytest.raises(ValueError, match="target must be a class index"):
        explain(model, case, method="saliency", target=-1)


def test_argument_validation(case):
    model = small_model()
    with pytest.raises(ValueError, match="case must be"):
        explain(model, case.image, method="saliency")
    with pytest.raises(ValueError, match="baseline must be a Baseline"):
        explain(model, case, baseline=0.0)
    with pytest.raises(ValueError, match="superpixels must be a Superpixels"):
        explain(model, case, superpixels=10)
    with pytest.raises(ValueError, match="IntegratedGradients takes no argument 'steps'"):
        explain(model, case, method="ig", method_kwargs={"steps": 3})
    with pytest.raises(ValueError, match="'baselines' is set by explain"):
        explain(model, case, method="ig", method_kwargs={"baselines": 0})
    with pytest.raises(ValueError, match="permutation_batch"):
        explain(model, case, method="FeaturePermutation", superpixels=SP, method_kwargs={"permutation_batch": 1},
                show_progress=False)


def test_torchscript_models(case):
    scripted = torch.jit.script(small_model())
    exp = explain(scripted, case, method="saliency", show_progress=False)
    ref = explain(small_model(), case, method="saliency", show_progress=False)
    torch.testing.assert_close(exp.attributions, ref.attributions)
    with pytest.raises(ValueError, match="GuidedBackprop needs module hooks"):
        explain(scripted, case, method="GuidedBackprop")


def test_model_state_is_restored(case):
    model = small_model().train()
    explain(model, case, method="GuidedBackprop", target=0, show_progress=False)
    assert model.training
    assert all(m.inplace for m in model.modules() if isinstance(m, torch.nn.ReLU))


def test_seeded_and_global_rng_untouched(case):
    model = small_model()
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = explain(model, case, method="shapley", superpixels=SP, method_kwargs={"n_samples": 2}, show_progress=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = explain(model, case, method="shapley", superpixels=SP, method_kwargs={"n_samples": 2}, show_progress=False)
    assert torch.equal(a.attributions, b.attributions)


def test_joint_superpixels_give_identical_maps(case):
    weight = torch.randn((1,) + tuple(case.image.shape))
    exp = explain(LinearProbe(weight), case, method="FeatureAblation", target=0,
                  superpixels=Superpixels(n_segments=4, joint=True), show_progress=False)
    assert torch.equal(exp.feature_mask[0], exp.feature_mask[1])
    # one superpixel spans both modalities: the same value on both maps
    torch.testing.assert_close(exp.attributions[0], exp.attributions[1])


def test_2d_case():
    fg = torch.from_numpy(ball((16, 12)))
    image = torch.randn(2, 16, 12) * fg
    case = Case(image, ("a", "b"), np.eye(4), foreground=fg)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3, padding=1), torch.nn.ReLU(),
                                torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 2)).eval()
    for method in ("FeatureAblation", "LayerGradCam", "GuidedGradCam"):
        exp = explain(model, case, method=method, superpixels=SP, show_progress=False)
        assert exp.attributions.shape == (2, 16, 12)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU twin: every test above)")
@pytest.mark.parametrize("method", ["FeatureAblation", "ShapleyValueSampling", "IntegratedGradients", "LayerGradCam"])
def test_cuda_matches_cpu(case, method):
    kwargs = FAST_KWARGS.get(method)
    cpu = explain(small_model(), case, method=method, superpixels=SP, target=0, method_kwargs=kwargs,
                  show_progress=False)
    gpu = explain(small_model(), case, method=method, superpixels=SP, target=0, method_kwargs=kwargs,
                  device="cuda", show_progress=False)
    assert gpu.attributions.device.type == "cpu"
    torch.testing.assert_close(gpu.attributions, cpu.attributions, rtol=1e-3, atol=1e-5)
