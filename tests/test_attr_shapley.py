"""mmxai_fast.attr.ShapleyValueSampling / ShapleyValues against Captum 0.9, and the extensions."""
import inspect

import captum.attr as ca
import pytest
import torch

from mmxai_fast.attr import AttributionInputError, ShapleyValues, ShapleyValueSampling

from attr_models import assert_close_tree, ConvNet, GRID, TupleMLP

ATOL, RTOL = 1e-5, 1e-4


def _assert_close(ours, theirs):
    assert_close_tree(ours, theirs, ATOL, RTOL)


def _both(cls_ours, cls_captum, forward, inputs, seed=3, **kwargs):
    torch.manual_seed(seed)
    expected = cls_captum(forward).attribute(inputs, **kwargs)
    torch.manual_seed(seed)
    return cls_ours(forward).attribute(inputs, **kwargs), expected


@pytest.mark.parametrize("n,ppe,target,baselines", [
    (1, 1, 0, None), (3, 1, [0, 2, 1], 0.5), (3, 3, torch.tensor([2, 0, 1]), torch.randn(1, 1, 3, 4, 4)),
    (1, 4, 2, (torch.randn(1, 1, 3, 4, 4),)), (3, 2, None, None),
])
def test_sampling_matches_captum_conv(n, ppe, target, baselines):
    x = torch.randn(n, 1, 3, 4, 4)
    ours, theirs = _both(ShapleyValueSampling, ca.ShapleyValueSampling, ConvNet(), x, target=target,
                         baselines=baselines, feature_mask=GRID, n_samples=4, perturbations_per_eval=ppe)
    _assert_close(ours, theirs)


@pytest.mark.parametrize("n,ppe,mask", [
    (1, 1, None),
    (3, 3, (torch.tensor([[0, 1, 1, 2]]),
            torch.tensor([[[3, 4, 4, 5, 5]], [[0, 4, 2, 2, 5]], [[3, 3, 5, 1, 1]]]))),  # per-example, shared ids
    (3, 1, (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 4, 0, 0, 4]]]))),
])
def test_sampling_matches_captum_tuple(n, ppe, mask):
    inputs = (torch.randn(n, 4), torch.randn(n, 1, 5))
    model = TupleMLP()
    ours, theirs = _both(ShapleyValueSampling, ca.ShapleyValueSampling, model, inputs, target=1,
                         additional_forward_args=(torch.rand(n, 1) + 0.5,), feature_mask=mask, n_samples=3,
                         perturbations_per_eval=ppe, baselines=(0.0, -1.0))
    _assert_close(ours, theirs)


def test_scalar_per_batch_output_matches_captum():
    model = ConvNet()
    x = torch.randn(3, 1, 3, 4, 4)
    ours, theirs = _both(ShapleyValueSampling, ca.ShapleyValueSampling, lambda t: model(t).sum(), x,
                         feature_mask=GRID, n_samples=5)
    _assert_close(ours, theirs)
    with pytest.raises(AttributionInputError, match="perturbations_per_eval must be 1"):
        ShapleyValueSampling(lambda t: model(t).sum()).attribute(x, feature_mask=GRID, perturbations_per_eval=2)


def test_exact_shapley_values_match_captum():
    model = ConvNet()
    x = torch.randn(2, 1, 3, 4, 4)
    mask = GRID % 4
    ours = ShapleyValues(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval=5)
    _assert_close(ours, ca.ShapleyValues(model).attribute(x, target=1, feature_mask=mask))
    assert isinstance(ShapleyValues(model), ca.ShapleyValues)


def test_sampling_converges_to_exact():
    model = ConvNet()
    x = torch.randn(1, 1, 3, 4, 4)
    mask = GRID % 5
    exact = ShapleyValues(model).attribute(x, target=0, feature_mask=mask, perturbations_per_eval="auto")
    sampler = ShapleyValueSampling(model)
    estimate = sampler.attribute(x, target=0, feature_mask=mask, n_samples=600, perturbations_per_eval="auto")
    stderr = sampler.last_stderr
    assert sampler.last_n_samples == 600 and stderr.shape == estimate.shape
    assert ((estimate - exact).abs() <= 5 * stderr + 1e-6).all()
    assert (estimate - exact).abs().max() < 0.1 * exact.abs().max()


def _toy_game():
    """Quadratic game with a small cubic term: antithetic pairs cancel the pairwise part."""
    gen = torch.Generator().manual_seed(7)
    a = torch.randn(6, 6, generator=gen)
    w = torch.randn(6, generator=gen)

    def forward(x):
        return ((x @ a) * x).sum(1) + x @ w + 0.2 * x.prod(1)

    return forward, torch.randn(1, 6, generator=gen)


def test_antithetic_has_lower_error_at_equal_evaluations():
    forward, x = _toy_game()
    exact = ShapleyValues(forward).attribute(x, perturbations_per_eval=16)
    errors = {False: 0.0, True: 0.0}
    for seed in range(12):
        for antithetic in errors:
            torch.manual_seed(seed)
            sampler = ShapleyValueSampling(forward)
            estimate = sampler.attribute(x, n_samples=8, perturbations_per_eval=8, antithetic=antithetic)
            assert sampler.last_n_samples == 8
            errors[antithetic] += float(((estimate - exact) ** 2).sum())
    assert errors[True] < 0.5 * errors[False]


def test_stopping_rule_stops_early_on_additive_model():
    w = torch.tensor([1.0, -2.0, 0.5, 3.0])
    x = torch.randn(2, 4)
    sampler = ShapleyValueSampling(lambda t: t @ w)
    attr = sampler.attribute(x, n_samples=4, target_stderr=1e-4, max_samples=200)
    assert sampler.last_n_samples == 4
    torch.testing.assert_close(attr, x * w, atol=1e-5, rtol=1e-5)
    sampler.attribute(x, n_samples=4, target_relative_stderr=1e-3, max_samples=200)
    assert sampler.last_n_samples == 4
    forward, x6 = _toy_game()  # non-additive: runs to the cap
    sampler = ShapleyValueSampling(forward)
    sampler.attribute(x6, n_samples=4, target_stderr=1e-6, max_samples=20, perturbations_per_eval=8)
    assert sampler.last_n_samples == 20


def test_signatures_and_progress(capsys):
    theirs = inspect.signature(ca.ShapleyValueSampling.attribute).parameters
    ours = inspect.signature(ShapleyValueSampling.attribute).parameters
    positional = [(p.name, p.default) for p in ours.values() if p.kind != p.KEYWORD_ONLY]
    assert positional == [(p.name, p.default) for p in theirs.values()]
    assert [(p.name, p.default) for p in inspect.signature(ShapleyValues.attribute).parameters.values()] == \
        [(p.name, p.default) for p in inspect.signature(ca.ShapleyValues.attribute).parameters.values()]
    ShapleyValueSampling(ConvNet()).attribute(torch.randn(1, 1, 3, 4, 4), target=0, feature_mask=GRID,
                                               n_samples=2, show_progress=True, perturbations_per_eval=5)
    err = capsys.readouterr().err
    assert "Shapley Value Sampling attribution" in err and "4/4" in err


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_samples=3, antithetic=True), "n_samples must be even"),
    (dict(max_samples=10), "max_samples needs a stopping rule"),
    (dict(target_stderr=-1.0), "target_stderr must be a positive"),
    (dict(n_samples=0), "n_samples must be an int >= 1"),
    (dict(perturbations_per_eval=1.5), "perturbations_per_eval"),
    (dict(feature_mask=torch.zeros(2, 1, 3, 4, 5, dtype=torch.long)), r"feature_mask\[0\] must be broadcastable"),
    (dict(baselines=torch.zeros(3, 1, 3, 4, 4)), r"baselines\[0\] must be broadcastable"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(AttributionInputError, match=match):
        ShapleyValueSampling(ConvNet()).attribute(torch.randn(2, 1, 3, 4, 4), target=0, **kwargs)


def test_missing_ids_warn_like_captum():
    with pytest.warns(UserWarning, match="Feature mask is missing some integers"):
        ShapleyValueSampling(ConvNet()).attribute(torch.randn(1, 1, 3, 4, 4), target=0, feature_mask=GRID * 2,
                                                  n_samples=1)
