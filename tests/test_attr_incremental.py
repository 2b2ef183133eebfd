"""``incremental=False | True | "auto"`` on Occlusion, FeatureAblation and ShapleyValueSampling:
incremental results equal dense ones (float32, atol 1e-5), "auto" decides from the plan's
predicted FLOP ratio, unsupported models and inputs fall back to dense with the reason reported."""
import pytest
import torch
from torch import nn

from mmxai_fast.attr import FeatureAblation, Occlusion, ShapleyValueSampling
from mmxai_fast.attr._errors import AttributionInputError
from mmxai_fast.models import VGG3D

ATOL = 1e-5


def _vgg():
    torch.manual_seed(0)
    model = VGG3D(in_channels=2, widths=(4, 8), hidden=8).eval()
    for m in model.modules():  # non-trivial running statistics, so a wrong box shows
        if isinstance(m, nn.BatchNorm3d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    return model


def _input(size=16, channels=2):
    return torch.randn(1, channels, size, size, size, generator=torch.Generator().manual_seed(1))


def _blocks(size=16, block=4):
    """Cube superpixels: ``(size / block)^3`` features."""
    idx = torch.arange(size) // block
    per = size // block
    return (idx[:, None, None] * per * per + idx[None, :, None] * per + idx[None, None, :])[None, None]


def _occlusion(model, x, incremental, coarse=False):
    window, stride = (8, 8) if coarse else (6, 5)  # 8 windows, or 27 overlapping ones with edges
    explainer = Occlusion(model)
    out = explainer.attribute(x, sliding_window_shapes=(x.shape[1],) + (window,) * 3, strides=(1,) + (stride,) * 3,
                              target=1, perturbations_per_eval=8, incremental=incremental)
    return out, explainer.last_incremental_report


def _ablation(model, x, incremental, coarse=False):
    explainer = FeatureAblation(model)
    out = explainer.attribute(x, target=0, feature_mask=_blocks(x.shape[2], 8 if coarse else 4),
                              perturbations_per_eval=8,
                              incremental=incremental)
    return out, explainer.last_incremental_report


def _shapley(model, x, incremental, coarse=False, seed=0):
    n_samples = 2 if coarse else 4
    explainer = ShapleyValueSampling(model)
    torch.manual_seed(seed)
    out = explainer.attribute(x, target=1, feature_mask=_blocks(x.shape[2], 8), n_samples=n_samples,
                              perturbations_per_eval=n_samples, incremental=incremental)  # 8 features
    return out, explainer.last_incremental_report


METHODS = [_occlusion, _ablation, _shapley]


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__[1:])
def test_vgg_incremental_equals_dense(method):
    model, x = _vgg(), _input()
    dense, report_dense = method(model, x, False)
    inc, report = method(model, x, True)
    assert not report_dense["used"] and report["used"], report
    assert report["cache_bytes"] > 0 and report["model_calls"] > 0 and report["model_seconds"] > 0
    assert report["predicted_speedup"] > 1 and report["unsupported"] == []
    torch.testing.assert_close(inc, dense, atol=ATOL, rtol=0)
    assert dense.abs().max() > 1e-3  # the comparison is not between zeros


def test_shapley_same_seed_same_result_and_chains_reuse_state():
    model, x = _vgg(), _input()
    a, report = _shapley(model, x, True, seed=3)
    b, _ = _shapley(model, x, True, seed=3)
    c, _ = _shapley(model, x, True, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    # 8 features: initialize + full + 7 steps of the 4 chains, one model call each
    assert report["model_calls"] == 2 + 7


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__[1:])
def test_monai_resnet18_incremental_equals_dense(method):
    monai = pytest.importorskip("monai")
    torch.manual_seed(0)
    model = monai.networks.nets.resnet18(spatial_dims=3, n_input_channels=1, num_classes=2).eval()
    x = _input(16, channels=1)
    dense, _ = method(model, x, False, coarse=True)
    inc, report = method(model, x, True, coarse=True)
    assert report["used"] and report["unsupported"] == [], report
    torch.testing.assert_close(inc, dense, atol=ATOL, rtol=0)


def test_auto_uses_incremental_when_predicted_faster():
    model, x = _vgg(), _input()
    dense, _ = _occlusion(model, x, False)
    auto, report = _occlusion(model, x, "auto")
    assert report["used"] and report["predicted_speedup"] > 1.5 and "predicted speedup" in report["reason"]
    torch.testing.assert_close(auto, dense, atol=ATOL, rtol=0)


class _GroupNormFirst(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.GroupNorm(1, 2)
        self.conv = nn.Conv3d(2, 3, 3, padding=1)
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.conv(self.norm(x)).mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("method", METHODS, ids=lambda f: f.__name__[1:])
def test_auto_falls_back_on_unsupported_model_exactly(method):
    torch.manual_seed(0)
    model, x = _GroupNormFirst().eval(), _input(8)
    dense, _ = method(model, x, False)
    auto, report = method(model, x, "auto")
    assert not report["used"] and "<= 1.5" in report["reason"], report
    # the plan names the unsupported layer; boxes covering the input are refused before any tracing
    assert "GroupNorm" in report["reason"] or "boxes cover 100% of the input" in report["reason"], report
    assert report["model_calls"] > 0  # the dense model calls are still timed
    assert torch.equal(auto, dense)


def test_true_on_unsupported_input_warns_and_runs_dense():
    model = _vgg()
    x = torch.cat([_input(), _input()])  # two examples: not one (1, C, *S) reference
    dense = Occlusion(model).attribute(x, sliding_window_shapes=(2, 8, 8, 8), strides=8, target=0)
    explainer = Occlusion(model)
    with pytest.warns(UserWarning, match="falls back to dense"):
        out = explainer.attribute(x, sliding_window_shapes=(2, 8, 8, 8), strides=8, target=0, incremental=True)
    assert not explainer.last_incremental_report["used"]
    assert "one floating example" in explainer.last_incremental_report["reason"]
    assert torch.equal(out, dense)


def test_incremental_argument_is_validated():
    model, x = _vgg(), _input(8)
    with pytest.raises(AttributionInputError, match="incremental must be False, True, 'auto' or None .the patch policy's., got 'yes'"):
        Occlusion(model).attribute(x, sliding_window_shapes=(2, 4, 4, 4), incremental="yes")


@pytest.mark.parametrize("cls,kw", [(FeatureAblation, {}),
                                    (ShapleyValueSampling, dict(n_samples=3, perturbations_per_eval=2))],
                         ids=["ablation", "shapley_partial_chain_block"])
def test_background_id_baseline_and_chunks_not_dividing_samples(cls, kw):
    model, x = _vgg(), _input()
    outs = []
    for incremental in (False, True):
        torch.manual_seed(0)
        explainer = cls(model)
        outs.append(explainer.attribute(x, target=0, feature_mask=_blocks(16, 8), baselines=0.5, background_id=3,
                                        incremental=incremental, **kw))
    assert explainer.last_incremental_report["used"]
    torch.testing.assert_close(outs[1], outs[0], atol=ATOL, rtol=0)
    assert outs[0].abs().max() > 1e-3


def test_auto_chunking_runs_the_runner_and_reuses_its_reference_output():
    """With ``perturbations_per_eval="auto"`` (and under a patch) model calls go through the
    Evaluator's ModelCaller: the runner must stand behind it, not the dense model."""
    model, x = _vgg(), _input()
    dense, _ = _occlusion(model, x, False)
    calls = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    explainer = Occlusion(model)
    out = explainer.attribute(x, sliding_window_shapes=(2, 6, 6, 6), strides=(1, 5, 5, 5), target=1,
                              perturbations_per_eval="auto", incremental=True)
    report = explainer.last_incremental_report
    assert report["used"] and report["model_calls"] >= 2, report
    assert not calls  # neither the windows nor the unperturbed evaluation ran the dense model
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)


def test_patch_policy_sets_incremental_for_captum_calls():
    import captum.attr as ca

    from mmxai_fast import patch_captum

    model, x = _vgg(), _input()
    dense, _ = _occlusion(model, x, False)
    with patch_captum(incremental="auto"):
        explainer = ca.Occlusion(model)
        out = explainer.attribute(x, sliding_window_shapes=(2, 6, 6, 6), strides=(1, 5, 5, 5), target=1,
                                  perturbations_per_eval=8)
        assert explainer.last_incremental_report["used"]
        kept = Occlusion(model)  # an explicit False wins over the policy
        kept.attribute(x, sliding_window_shapes=(2, 6, 6, 6), strides=(1, 5, 5, 5), target=1, incremental=False)
        assert not kept.last_incremental_report["used"]
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)
    plain = Occlusion(model)
    plain.attribute(x, sliding_window_shapes=(2, 6, 6, 6), strides=(1, 5, 5, 5), target=1)
    assert plain.last_incremental_report["reason"] == "incremental=False"  # unpatched: dense by default


def test_ablation_rows_run_from_the_reference_without_chain_states(monkeypatch):
    from mmxai_fast.incremental import IncrementalRunner

    def no_chains(*_):
        raise AssertionError("FeatureAblation rows must not clone per-row activation states")

    monkeypatch.setattr(IncrementalRunner, "start_chains", no_chains)
    model, x = _vgg(), _input()
    dense, _ = _ablation(model, x, False)
    out, report = _ablation(model, x, True)
    assert report["used"]
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)


def test_shapley_chains_per_call_fit_the_state_budget(monkeypatch):
    import mmxai_fast.attr._incremental as inc
    from mmxai_fast.incremental import IncrementalRunner

    rows_seen = []
    step = IncrementalRunner.step
    monkeypatch.setattr(IncrementalRunner, "step", lambda self, states, inputs, boxes: (
        rows_seen.append(inputs.shape[0]), step(self, states, inputs, boxes))[1])
    model, x = _vgg(), _input()
    dense, _ = _shapley(model, x, False)
    monkeypatch.setattr(inc, "CHAIN_STATE_BUDGET", 1)  # room for one chain
    out, report = _shapley(model, x, True)
    assert report["used"] and rows_seen and max(rows_seen) == 1, rows_seen
    torch.testing.assert_close(out, dense, atol=ATOL, rtol=0)


def test_auto_refuses_whole_input_boxes_before_tracing(monkeypatch):
    from mmxai_fast.incremental import IncrementalPlan

    def traced(*_args, **_kwargs):
        raise AssertionError("the boxes already bound the gain at 1x: no plan needed")

    monkeypatch.setattr(IncrementalPlan, "from_module", traced)
    model, x = _vgg(), _input(8)
    explainer = FeatureAblation(model)
    out = explainer.attribute(x, target=0, feature_mask=(torch.arange(8) % 2).expand(1, 1, 8, 8, 8).contiguous(),
                              incremental="auto")  # two striped features, each spanning the volume
    report = explainer.last_incremental_report
    assert not report["used"] and report["predicted_speedup"] <= 1.5 and "boxes cover" in report["reason"], report
    assert torch.equal(out, FeatureAblation(model).attribute(x, target=0, feature_mask=(torch.arange(8) % 2)
                                                             .expand(1, 1, 8, 8, 8).contiguous()))


def test_auto_asks_more_of_the_plan_at_one_row_per_call(monkeypatch):
    import mmxai_fast.attr._incremental as inc

    monkeypatch.setattr(inc, "AUTO_MIN_SPEEDUP_ONE_ROW", 1e9)
    model, x = _vgg(), _input()
    explainer = Occlusion(model)
    kw = dict(sliding_window_shapes=(2, 6, 6, 6), strides=(1, 5, 5, 5), target=1, incremental="auto")
    explainer.attribute(x, perturbations_per_eval=1, **kw)
    assert not explainer.last_incremental_report["used"]
    assert "<= 1000000000.0" in explainer.last_incremental_report["reason"]
    explainer.attribute(x, perturbations_per_eval=8, **kw)
    assert explainer.last_incremental_report["used"]
