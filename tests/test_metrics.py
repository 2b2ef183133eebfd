"""MSFI, Kendall tau-b, exact modality Shapley values, deletion/insertion curves and delta-AUPC."""

import pytest
import scipy.stats
import torch

from mmxai_fast.metrics import (feature_scores, kendall_tau_b, modality_importance_correlation, modality_shapley,
                                msfi, perturbation_curves)

class ChannelModel(torch.nn.Module):
    """Output = sum over channels of w_m * mean(x_m) + an interaction of channels 0 and 1 (2 classes)."""

    def __init__(self, weights):
        super().__init__()
        self.w = torch.tensor(weights, dtype=torch.float64)

    def forward(self, x):
        means = x.flatten(2).mean(-1)  # [B, M]
        score = means @ self.w + means[:, 0] * means[:, 1]
        return torch.stack((-score, score), 1)

def test_modality_shapley_is_exact():
    model = ChannelModel([1.0, 2.0, 0.5])
    x = torch.rand(1, 3, 4, 4, dtype=torch.float64) + 1
    phi = modality_shapley(model, x, 0.0, target=1)
    means = x.flatten(2).mean(-1)[0]
    expected = model.w * means
    expected[0] += means[0] * means[1] / 2
    expected[1] += means[0] * means[1] / 2
    torch.testing.assert_close(phi, expected, rtol=0, atol=1e-12)

def test_msfi_formula():
    attributions = torch.zeros(2, 4)
    attributions[0] = torch.tensor([3.0, 1.0, -5.0, 0.0])  # 3/4 of the positive mass inside
    attributions[1] = torch.tensor([0.0, 2.0, 2.0, 0.0])   # 1/2 inside
    regions = torch.tensor([1, 0, 1, 0])                   # shared by both modalities
    # phi min-max normalised: [1, 0] -> only modality 0 counts
    assert msfi(attributions, regions, torch.tensor([5.0, 1.0])) == pytest.approx(0.75)
    # three modalities, phi -> [1, 0.5, 0]
    three = torch.cat((attributions, torch.ones(1, 4)))
    per_modality = torch.tensor([[1, 0, 1, 0], [1, 0, 1, 0], [0, 0, 0, 0]])
    assert msfi(three, per_modality, torch.tensor([3.0, 2.0, 1.0])) == pytest.approx((0.75 + 0.5 * 0.5) / 1.5)
    # all modalities equally important: plain average of the shares
    assert msfi(attributions, regions, torch.tensor([2.0, 2.0])) == pytest.approx(0.625)
    with pytest.raises(ValueError, match="M = 3"):
        msfi(attributions, regions, torch.ones(3))

@pytest.mark.parametrize("x,y", [([1, 2, 3, 4], [1, 3, 2, 4]), ([1, 1, 2, 3], [2, 1, 1, 3]),
                                 ([0.1, 0.4, 0.2], [3, 2, 1]), ([1, 2, 2, 5, 5], [5, 5, 1, 2, 2])])
def test_kendall_tau_b_matches_scipy(x, y):
    assert kendall_tau_b(x, y) == pytest.approx(scipy.stats.kendalltau(x, y).statistic, abs=1e-12)

def test_modality_importance_correlation():
    attributions = torch.zeros(3, 2)
    attributions[:, 0] = torch.tensor([3.0, 2.0, 1.0])
    attributions[2, 1] = -10  # negative mass does not count
    assert modality_importance_correlation(attributions, torch.tensor([0.9, 0.5, 0.1])) == pytest.approx(1.0)
    assert modality_importance_correlation(attributions, torch.tensor([0.1, 0.5, 0.9])) == pytest.approx(-1.0)
    assert kendall_tau_b([1, 1, 1], [1, 2, 3]) == 0.0

def additive_model(weights):
    w = torch.tensor(weights, dtype=torch.float64)

    def forward(x):
        return (x.flatten(1) * w).sum(1, keepdim=True)
    return forward

def test_curves_of_an_additive_model():
    weights = [4.0, 1.0, 3.0, 2.0]
    forward = additive_model(weights)
    x = torch.ones(1, 4, dtype=torch.float64)
    mask = torch.arange(4).view(1, 4)
    heatmap = torch.tensor(weights)  # perfect ranking: 0, 2, 3, 1
    result = perturbation_curves(forward, x, heatmap, mask, 0.0, target=None, steps=4, n_random=8, seed=0)
    assert result["fractions"] == [0, 0.25, 0.5, 0.75, 1]
    assert result["deletion"]["curve"] == pytest.approx([10, 6, 3, 1, 0])
    assert result["insertion"]["curve"] == pytest.approx([0, 4, 7, 9, 10])
    assert result["deletion"]["area"] == pytest.approx((8 + 4.5 + 2 + 0.5) / 4)
    # every order's deletion + insertion curve is the full output at every point
    total = [a + b for a, b in zip(result["deletion"]["random_curve"], result["insertion"]["random_curve"])]
    assert total == pytest.approx([10] * 5)
    assert result["delta_aupc"]["deletion"] > 0 and result["delta_aupc"]["insertion"] > 0
    worst = perturbation_curves(forward, x, -heatmap, mask, 0.0, steps=4, n_random=8, seed=0)
    assert worst["delta_aupc"]["deletion"] < 0
    assert result["n_evaluations"] == 2 * 9 * 5  # one batch: 2 curves x (heatmap + 8 random orders) x 5 points

def test_random_reference_is_the_mean_over_orders():
    forward = additive_model([1.0, 2.0, 3.0])
    x = torch.ones(1, 3, dtype=torch.float64)
    mask = torch.arange(3).view(1, 3)
    # averaged over all 6 orders, removing k of 3 features leaves (3 - k)/3 of the output
    result = perturbation_curves(forward, x, torch.zeros(3), mask, steps=3, n_random=600, seed=1)
    assert result["deletion"]["random_curve"] == pytest.approx([6, 4, 2, 0], abs=0.25)

def test_fixed_feature_is_never_removed_and_scores_are_means():
    forward = additive_model([5.0, 1.0, 2.0])
    x = torch.ones(1, 3, dtype=torch.float64)
    mask = torch.arange(3).view(1, 3)
    result = perturbation_curves(forward, x, torch.tensor([9.0, 1.0, 2.0]), mask, steps=2, n_random=0,
                                 fixed_feature=0)
    assert result["deletion"]["curve"] == pytest.approx([8, 6, 5]) and "delta_aupc" not in result
    assert result["insertion"]["curve"] == pytest.approx([5, 7, 8])
    scores = feature_scores(torch.tensor([1.0, 3.0, 10.0, 0.0]), torch.tensor([0, 0, 1, 3]), 4)
    assert scores.tolist() == [2.0, 10.0, 0.0, 0.0]

@pytest.mark.parametrize("kwargs,match", [(dict(steps=0), "steps must be"), (dict(n_random=-1), "n_random")])
def test_curve_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        perturbation_curves(additive_model([1.0]), torch.ones(1, 1, dtype=torch.float64), torch.ones(1),
                            torch.zeros(1, 1, dtype=torch.long), **kwargs)

def test_evaluations_go_through_one_batched_function(monkeypatch):
    """Every metric evaluates the model through estimators._game.evaluate_coalitions."""
    import mmxai_fast.estimators._game as game_module

    calls = []
    original = game_module.evaluate_coalitions

    def spy(*args, **kwargs):
        calls.append(args[4].shape[0])
        return original(*args, **kwargs)
    monkeypatch.setattr(game_module, "evaluate_coalitions", spy)
    modality_shapley(ChannelModel([1.0, 1.0]), torch.rand(1, 2, 3, dtype=torch.float64), 0.0, target=0)
    assert calls == [4]
