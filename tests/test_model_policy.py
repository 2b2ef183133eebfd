"""The Evaluator's speed policies under patch_captum: batch="auto" is safe, layouts and opt-ins keep results."""

import captum.attr
import pytest
import torch

import mmxai_fast
from mmxai_fast.attr._model_policy import REPORT, ModelPolicy, format_report, reset_report


def _net(norm=None):
    torch.manual_seed(0)
    layers = [torch.nn.Conv3d(2, 4, 3, padding=1)]
    if norm == "batchnorm":
        layers.append(torch.nn.BatchNorm3d(4))
    layers += [torch.nn.ReLU(), torch.nn.AdaptiveAvgPool3d(2), torch.nn.Flatten(), torch.nn.Linear(32, 3)]
    return torch.nn.Sequential(*layers).eval()


class BatchDependent(torch.nn.Module):
    """Eval mode, but each row's output depends on the other rows (a cross-sample layer)."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        out = self.net(x)
        return out - out.mean(0, keepdim=True) + out


class SneakyBatchDependent(torch.nn.Module):
    """Passes a two-row probe; differs only in batches of three rows or more."""

    def __init__(self):
        super().__init__()
        self.net = _net()

    def forward(self, x):
        return self.net(x) + (0.5 if x.shape[0] > 2 else 0.0)


def _case():
    torch.manual_seed(1)
    x = torch.randn(1, 2, 8, 8, 8)
    mask = (torch.arange(512).reshape(1, 1, 8, 8, 8) // 64).expand(1, 2, 8, 8, 8).contiguous()
    return x, mask


def _captum_fa(model, x, mask):
    return captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)


@pytest.fixture(autouse=True)
def _fresh_report():
    reset_report()
    yield
    mmxai_fast.unpatch_captum()


def _patched_fa(model, x, mask, **policy):
    with mmxai_fast.patch_captum(**policy):
        return captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask)


def _notes():
    return " ".join(REPORT["FeatureAblation"].notes)


def test_batch_auto_batches_an_eval_model_and_keeps_results():
    model, (x, mask) = _net(), _case()
    expected = _captum_fa(model, x, mask)
    got = _patched_fa(model, x, mask, batch="auto")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    stats = REPORT["FeatureAblation"]
    assert "perturbations_per_eval=" in _notes()
    assert stats.evaluations == 9  # 1 reference + 8 features, probes not counted
    chosen = int(_notes().split("perturbations_per_eval=")[1].split()[0])
    assert 1 <= chosen <= 8


def test_batch_keep_and_plain_patch_keep_the_callers_value():
    model, (x, mask) = _net(), _case()
    _patched_fa(model, x, mask, batch="keep")
    assert "perturbations_per_eval" not in _notes()
    assert REPORT["FeatureAblation"].model_calls == 9


@pytest.mark.parametrize("model, why", [(_net("batchnorm").train(), "train mode"),
                                        (BatchDependent().eval(), "two different rows")])
def test_models_whose_outputs_depend_on_the_batch_keep_batch_one(model, why):
    x, mask = _case()
    expected = _captum_fa(model, x, mask)
    with pytest.warns(RuntimeWarning, match=why):
        got = _patched_fa(model, x, mask, batch="auto")
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    assert "kept perturbations_per_eval=1" in _notes()


def test_first_batched_chunk_is_checked_against_row_by_row():
    model, (x, mask) = SneakyBatchDependent().eval(), _case()
    expected = _captum_fa(model, x, mask)
    with mmxai_fast.patch_captum(batch="keep"):
        with pytest.warns(RuntimeWarning, match="row-by-row"):
            got = captum.attr.FeatureAblation(model).attribute(x, target=1, feature_mask=mask,
                                                               perturbations_per_eval=4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("channels_last", [True, False])
def test_channels_last_and_inference_mode_keep_results(channels_last):
    model, (x, mask) = _net(), _case()
    expected = _captum_fa(model, x, mask)
    got = _patched_fa(model, x, mask, batch="keep", channels_last=channels_last)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
    assert not got.is_inference()


def test_autocast_reports_its_error_against_float32():
    model, (x, mask) = _net(), _case()
    got = _patched_fa(model, x, mask, batch="keep", autocast="bf16")
    assert got.dtype == torch.float32
    assert "autocast=bf16: max abs error" in _notes()


def test_cuda_graphs_on_cpu_say_why_not_used():
    model, (x, mask) = _net(), _case()
    _patched_fa(model, x, mask, batch="keep", cuda_graphs=True)
    assert "cuda_graphs=True not used" in _notes()


def test_report_lists_calls_evaluations_and_times():
    model, (x, mask) = _net(), _case()
    _patched_fa(model, x, mask, batch="auto")
    text = format_report()
    assert "FeatureAblation: 1 calls, 9 evaluations" in text and "engine" in text


@pytest.mark.parametrize("field, value", [("batch", "yes"), ("channels_last", "maybe"), ("autocast", "int8"),
                                          ("compile", 1)])
def test_bad_policy_settings_name_the_argument(field, value):
    with pytest.raises(ValueError, match=f"{field} must be"):
        ModelPolicy(**{field: value})
