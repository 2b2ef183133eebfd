"""Eval-mode BatchNorm folded into the convolution before it: the folded copy computes the same
function (float32 against the unfolded model in float64, 1e-5 of the output scale), the caller's
model is untouched, and every pattern whose data flow is not certain is left alone."""
import pytest
import torch
from torch import nn

from mmxai_fast.attr._evaluator_policy import ModelCaller
from mmxai_fast.attr._fold_batchnorm import FoldedConv, fold_batchnorm
from mmxai_fast.attr._model_policy import ModelPolicy
from mmxai_fast.models import VGG3D, DenseNet3D


def _randomize_stats(model: nn.Module) -> nn.Module:
    gen = torch.Generator().manual_seed(3)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.running_mean.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
                m.bias.data.copy_(torch.rand(m.num_features, generator=gen) - 0.5)
    return model.eval()


def _assert_same_function(model: nn.Module, folded: nn.Module, x: torch.Tensor) -> None:
    with torch.no_grad():
        reference = _as_double(model)(x.double())
        got = folded(x)
    assert got.dtype == torch.float32
    scale = float(reference.abs().max())
    torch.testing.assert_close(got.double(), reference, atol=1e-5 * scale, rtol=0)


def _as_double(model: nn.Module) -> nn.Module:
    import copy

    return copy.deepcopy(model).double()


def _folded_types(model: nn.Module) -> int:
    return sum(isinstance(m, FoldedConv) for m in model.modules())


@pytest.mark.parametrize("batch,layout", [(1, torch.contiguous_format), (3, torch.channels_last_3d)],
                         ids=["batch1", "batch3_channels_last"])
@pytest.mark.parametrize("make", [lambda: VGG3D(in_channels=2, widths=(4, 8), hidden=8),
                                  lambda: DenseNet3D(in_channels=2, num_classes=3, block_layers=(2, 2))],
                         ids=["vgg", "densenet"])
def test_folded_copy_computes_the_same_function(make, batch, layout):
    torch.manual_seed(0)
    model = _randomize_stats(make())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, note = fold_batchnorm(model)
    assert folded is not None and _folded_types(folded) > 0 and "BatchNorm layers folded" in note
    x = torch.randn(batch, 2, 12, 12, 12).contiguous(memory_format=layout)
    _assert_same_function(model, folded, x)
    assert _folded_types(model) == 0  # the caller's model is untouched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_conv2d_with_bias_affine_free_norm_and_no_relu():
    torch.manual_seed(0)
    model = _randomize_stats(nn.Sequential(nn.Conv2d(3, 5, 3, padding=1, stride=2, bias=True),
                                           nn.BatchNorm2d(5, affine=False), nn.Tanh(),
                                           nn.Conv2d(5, 4, 3, dilation=2, groups=1), nn.BatchNorm2d(4),
                                           nn.ReLU(), nn.Flatten()))
    folded, _ = fold_batchnorm(model)
    assert folded is not None and _folded_types(folded) == 2
    assert [m.relu for m in folded.modules() if isinstance(m, FoldedConv)] == [False, True]
    _assert_same_function(model, folded, torch.randn(2, 3, 17, 15))


def test_onednn_off_and_gradients_take_the_functional_path():
    torch.manual_seed(0)
    model = _randomize_stats(nn.Sequential(nn.Conv3d(2, 3, 3, padding=1), nn.BatchNorm3d(3), nn.ReLU()))
    x = torch.randn(1, 2, 6, 6, 6)
    plain, _ = fold_batchnorm(model, onednn=False)
    _assert_same_function(model, plain, x)
    fused, _ = fold_batchnorm(model)
    xg = x.clone().requires_grad_()
    fused(xg).sum().backward()  # the oneDNN primitive has no autograd: gradients use F.conv3d
    xr = x.clone().requires_grad_()
    model(xr).sum().backward()
    torch.testing.assert_close(xg.grad, xr.grad, atol=1e-5, rtol=1e-4)


class _CustomSequential(nn.Sequential):
    def forward(self, x):  # its own data flow: folding its children could be wrong
        return super().forward(x) + x.mean()


def _bn_in_train_mode():
    model = nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3)).eval()
    model[1].train()
    return model


NOT_FOLDED = "no Conv -> eval-mode BatchNorm"


@pytest.mark.parametrize("build,reason", [
    (_bn_in_train_mode, NOT_FOLDED),
    (lambda: nn.Sequential(nn.Conv3d(2, 3, 3), nn.ReLU(), nn.BatchNorm3d(3)).eval(), NOT_FOLDED),
    (lambda: nn.Sequential(nn.Conv3d(2, 3, 3, padding=1, padding_mode="reflect"), nn.BatchNorm3d(3)).eval(),
     NOT_FOLDED),
    (lambda: nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3, track_running_stats=False)).eval(), NOT_FOLDED),
    (lambda: _CustomSequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3)).eval(), NOT_FOLDED),
    (lambda: lambda x: x, "not a torch.nn.Module"),
    (lambda: torch.jit.script(nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3)).eval()), "TorchScript"),
], ids=["train_mode", "not_adjacent", "reflect_padding", "no_running_stats", "custom_forward", "function",
        "torchscript"])
def test_uncertain_patterns_are_left_alone(build, reason):
    folded, note = fold_batchnorm(build())
    assert folded is None and reason in note, note


def test_hooks_anywhere_keep_the_model_as_it_is():
    model = _randomize_stats(nn.Sequential(nn.Conv3d(2, 3, 3), nn.BatchNorm3d(3), nn.ReLU()))
    handle = model[2].register_forward_hook(lambda *_: None)
    folded, note = fold_batchnorm(model)
    assert folded is None and "hooks" in note
    handle.remove()
    assert fold_batchnorm(model)[0] is not None


def test_model_caller_folds_when_asked_and_says_so():
    torch.manual_seed(0)
    model = _randomize_stats(VGG3D(in_channels=2, widths=(4,), hidden=4))
    notes = []
    caller = ModelCaller(model, ModelPolicy(fold_batchnorm=True), None, lambda text, **_: notes.append(text))
    x = torch.randn(1, 2, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(caller(x), model(x), atol=1e-5, rtol=1e-5)
    assert any("fold_batchnorm: 1 BatchNorm layers folded" in n for n in notes), notes
    off = ModelCaller(model, ModelPolicy(), None, lambda text, **_: notes.append(text))
    assert off._model is model  # opt-in: by default the caller's own object runs
    with pytest.raises(ValueError, match="fold_batchnorm must be a bool, got 'yes'"):
        ModelPolicy(fold_batchnorm="yes")


def test_dense_calls_behind_the_incremental_wrapper_use_the_folded_copy(monkeypatch):
    from mmxai_fast.attr import FeatureAblation

    calls = []
    forward = FoldedConv.forward
    monkeypatch.setattr(FoldedConv, "forward", lambda self, x: (calls.append(1), forward(self, x))[1])
    torch.manual_seed(0)
    model = _randomize_stats(VGG3D(in_channels=2, widths=(4,), hidden=4))
    x = torch.randn(1, 2, 8, 8, 8)
    mask = (torch.arange(8) % 2).expand(1, 1, 8, 8, 8).contiguous()  # features spanning the volume: dense
    from mmxai_fast import patch_captum

    explainer = FeatureAblation(model)
    with patch_captum(fold_batchnorm=True):
        out = explainer.attribute(x, target=0, feature_mask=mask, perturbations_per_eval="auto", incremental="auto")
    assert not explainer.last_incremental_report["used"] and calls
    torch.testing.assert_close(out, FeatureAblation(model).attribute(x, target=0, feature_mask=mask),
                               atol=1e-5, rtol=1e-4)
