"""mmxai_fast.attr.FeatureAblation against captum.attr.FeatureAblation (Captum 0.9)."""
import itertools

import captum.attr as ca
import pytest
import torch

import mmxai_fast.attr as ma
from mmxai_fast.attr import AttributionInputError, FeatureAblation

from attr_models import assert_close_tree, ConvNet

ATOL, RTOL = 1e-5, 1e-4


class TupleMLP(torch.nn.Module):
    """MLP over a tuple ([N, 6], [N, 2, 3]) with extra args (tensor [N, 1], float) -> [N, 3]."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(12, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))

    def forward(self, a, b, scale, offset):
        return self.net(torch.cat((a, b.flatten(1)), dim=1)) * scale + offset


def _make_case(model_kind, n, mask_kind, baseline_kind):
    if model_kind == "conv":
        model = ConvNet()
        inputs = torch.randn(n, 1, 3, 4, 4)
        grid = (torch.arange(3).view(3, 1, 1) * 4 + torch.arange(4).view(1, 4, 1) // 2 * 2
                + torch.arange(4).view(1, 1, 4) // 2).view(1, 1, 3, 4, 4)
        masks = {"none": None, "broadcast": grid,
                 "per_example": (grid + torch.arange(n).view(n, 1, 1, 1, 1)) % 12}
        baselines = {"scalar": 0.25, "tensor": torch.randn(1, 1, 3, 4, 4), "tuple": (torch.randn(n, 1, 3, 4, 4),)}
        return model, inputs, masks[mask_kind], baselines[baseline_kind], None
    model = TupleMLP()
    inputs = (torch.randn(n, 6), torch.randn(n, 2, 3))
    shared = (torch.tensor([[0, 0, 1, 1, 2, 2]]), torch.tensor([[[3, 3, 4]]]))  # ids shared across the tuple
    per_example = (torch.tensor([[0, 1, 1, 2, 2, 3]]).repeat(n, 1), torch.tensor([[[3], [2]]]).repeat(n, 1, 3))
    masks = {"none": None, "broadcast": shared, "per_example": per_example}
    # Tuple inputs take one baseline per tensor (a lone scalar is not a Captum form for them).
    baselines = {"scalar": (-0.5, 0), "tensor": (torch.randn(6), torch.randn(2, 3)),
                 "tuple": (torch.randn(1, 6), 1.5)}
    args = (torch.rand(n, 1) + 0.5, 0.1)
    return model, inputs, masks[mask_kind], baselines[baseline_kind], args


def _target(kind, n):
    return {"int": 1, "list": [i % 3 for i in range(n)], "tensor": torch.arange(n) % 3, "scalar_out": None}[kind]


def _assert_close(ours, theirs):
    assert_close_tree(ours, theirs, ATOL, RTOL)


CASES = list(itertools.product(["conv", "mlp"], [1, 3], ["none", "broadcast", "per_example"],
                               ["int", "list", "tensor", "scalar_out"]))


@pytest.mark.parametrize("model_kind,n,mask_kind,target_kind", CASES)
def test_matches_captum(model_kind, n, mask_kind, target_kind):
    index = CASES.index((model_kind, n, mask_kind, target_kind))
    baseline_kind = ["scalar", "tensor", "tuple"][index % 3]
    ppe = [1, 3][index % 2]
    if target_kind == "scalar_out":
        ppe = 1  # Captum requires one perturbation per call when the model aggregates the batch
        if mask_kind == "per_example" and n > 1:
            mask_kind = "broadcast"
    model, inputs, mask, baselines, args = _make_case(model_kind, n, mask_kind, baseline_kind)
    forward = model if target_kind != "scalar_out" else (lambda *a: model(*a).sum())
    kwargs = dict(baselines=baselines, target=_target(target_kind, n), additional_forward_args=args,
                  feature_mask=mask, perturbations_per_eval=ppe)
    expected = ca.FeatureAblation(forward).attribute(inputs, **kwargs)
    _assert_close(FeatureAblation(forward).attribute(inputs, **kwargs), expected)


def test_auto_chunk_matches_and_halves_on_oom():
    model = ConvNet()
    x = torch.randn(2, 1, 3, 4, 4)
    calls = []

    def forward(inp):
        calls.append(inp.shape[0])
        if inp.shape[0] > 8:
            raise torch.OutOfMemoryError("simulated")
        return model(inp)

    expected = ca.FeatureAblation(model).attribute(x, target=2)
    _assert_close(FeatureAblation(forward).attribute(x, target=2, perturbations_per_eval="auto"), expected)
    assert max(calls) > 8  # "auto" first tried a large chunk...
    assert calls[-1] <= 8  # ...and finished with halved ones


def test_signature_and_subclass():
    import inspect
    ours = inspect.signature(FeatureAblation.attribute).parameters
    theirs = inspect.signature(ca.FeatureAblation.attribute).parameters
    def captum_part(params):  # keyword-only extensions (background_id, incremental) are documented
        return [(p.name, p.default) for p in params.values() if p.kind != p.KEYWORD_ONLY]
    assert captum_part(ours) == captum_part(theirs)
    assert {p.name: p.default for p in ours.values() if p.kind == p.KEYWORD_ONLY} == \
        {"background_id": None, "incremental": None}
    assert issubclass(FeatureAblation, ca.FeatureAblation)
    for name in ["Saliency", "Deconvolution", "GuidedBackprop", "NoiseTunnel", "InputXGradient",
                 "IntegratedGradients", "DeepLift", "GradientShap", "LayerGradCam", "GuidedGradCam"]:
        assert getattr(ma, name) is getattr(ca, name)


def test_progress_bar_description(capsys):
    model = ConvNet()
    FeatureAblation(model).attribute(torch.randn(1, 1, 3, 4, 4), target=0, show_progress=True,
                                     perturbations_per_eval=4)
    err = capsys.readouterr().err
    assert "Feature Ablation attribution" in err and "13/13" in err


def _bad(forward=None, **kwargs):
    forward = forward or ConvNet()
    x = kwargs.pop("inputs", torch.randn(2, 1, 3, 4, 4))
    return FeatureAblation(forward).attribute(x, target=kwargs.pop("target", 0), **kwargs)


@pytest.mark.parametrize("kwargs,match", [
    (dict(perturbations_per_eval=0), "perturbations_per_eval"),
    (dict(perturbations_per_eval="many"), "perturbations_per_eval"),
    (dict(feature_mask=torch.zeros(1, 1, 3, 4, 5, dtype=torch.long)), r"feature_mask\[0\] must be broadcastable"),
    (dict(feature_mask=torch.full((1, 1, 3, 4, 4), -1)), r"feature_mask\[0\] ids must be >= 0"),
    (dict(baselines=torch.zeros(2, 1, 3, 4, 5)), r"baselines\[0\] must be broadcastable"),
    (dict(baselines=(0.0, 1.0)), "baselines must give one value per input"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(AttributionInputError, match=match):
        _bad(**kwargs)


def test_whole_number_float_mask_equals_the_integer_mask():
    model, x = ConvNet(), torch.randn(2, 1, 3, 4, 4)
    mask = torch.arange(48).reshape(1, 1, 3, 4, 4) // 5
    ours = FeatureAblation(model).attribute(x, target=1, feature_mask=mask.double())
    torch.testing.assert_close(ours, FeatureAblation(model).attribute(x, target=1, feature_mask=mask))
    torch.testing.assert_close(ours, ca.FeatureAblation(model).attribute(x, target=1, feature_mask=mask.double()))


def test_float_mask_of_non_integers_is_rejected():  # whole-number float ids are accepted, as in Captum 0.9
    with pytest.raises(AttributionInputError, match=r"feature_mask\[0\] must hold whole-number ids, got 0.5"):
        _bad(feature_mask=torch.full((1, 1, 3, 4, 4), 0.5))


def test_model_not_growing_with_batch_is_rejected():
    model = ConvNet()
    with pytest.raises(AttributionInputError, match="must grow with the batch"):
        _bad(lambda x: model(x)[:2], perturbations_per_eval=3)
    # Captum-style code catching AssertionError still works.
    with pytest.raises(AssertionError):
        _bad(lambda x: model(x)[:2], perturbations_per_eval=3)


def test_nan_output_names_first_batch():
    model = ConvNet()

    def forward(x):
        out = model(x)
        return torch.where((x[:, 0, 0, 0, 0] == 0).unsqueeze(1), torch.nan, out)  # NaN once pixel 0 is ablated

    with pytest.raises(AttributionInputError, match="NaN, first at model call 2"):
        _bad(forward, perturbations_per_eval=5)


@pytest.mark.parametrize("target", [(1, 2), [(0, 1), (1, 0), (1, 2)], torch.tensor(2)])
def test_tuple_and_scalar_tensor_targets(target):
    conv = ConvNet()
    forward = lambda x: torch.stack((conv(x), -conv(x)), dim=1)  # noqa: E731  [N, 2, 3]
    if isinstance(target, torch.Tensor):
        forward = conv
    x = torch.randn(3, 1, 3, 4, 4)
    mask = torch.arange(48).view(1, 1, 3, 4, 4) // 4
    kwargs = dict(target=target, feature_mask=mask, perturbations_per_eval=5)
    _assert_close(FeatureAblation(forward).attribute(x, **kwargs),
                  ca.FeatureAblation(forward).attribute(x, **kwargs))
