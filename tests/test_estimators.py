"""Shapley/Owen estimators against exact values by enumeration on small games (F <= 10).

Tolerances: enumerations (leverage with every size enumerated, exact_shapley) agree with the
float64 reference to 1e-10. Sampled estimators are checked statistically: fewer than 5% of the
errors (seeds x features) may exceed 3 reported standard errors (0.3% for a normal error; the
antithetic pair means have heavy tails: 50 pairs), the mean over 30 seeds within 5
standard errors of that mean (unbiasedness), and the reported standard errors within a factor
of 2 of the spread over seeds (variance calibration).
"""
import itertools
import math

import pytest
import torch

from mmxai_fast.attr import KernelShap
from mmxai_fast.estimators import (METHODS, ModelGame, ShapleyEstimator, estimate_shapley, exact_shapley,
                                   hierarchy_from_masks, hierarchy_paths)

F = 8
SEEDS = 30


def make_game(num=F, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(num, generator=g, dtype=torch.float64)
    q = torch.randn(num, num, generator=g, dtype=torch.float64) * 0.3

    def game(rows):
        z = rows.double()
        return torch.tanh(0.5 * z @ w) + 0.1 * ((z @ q) * z).sum(-1) + 0.3 * (z.sum(-1) / num) ** 3
    return game


def brute_force_shapley(game, num):
    phi = torch.zeros(num, dtype=torch.float64)
    for i in range(num):
        others = [j for j in range(num) if j != i]
        for s in range(num):
            for subset in itertools.combinations(others, s):
                rows = torch.zeros(2, num, dtype=torch.bool)
                rows[:, list(subset)] = True
                rows[0, i] = True
                v = game(rows)
                phi[i] += math.factorial(s) * math.factorial(num - s - 1) / math.factorial(num) * (v[0] - v[1])
    return phi


def test_exact_shapley_matches_the_definition():
    game = make_game(6)
    torch.testing.assert_close(exact_shapley(game, 6), brute_force_shapley(game, 6), rtol=0, atol=1e-12)


def test_leverage_enumerates_everything_when_the_budget_allows():
    game = make_game(10)
    result = estimate_shapley(game, 10, "leverage", n_evaluations=2 ** 10, seed=0)
    torch.testing.assert_close(result.values, exact_shapley(game, 10), rtol=0, atol=1e-10)
    assert result.n_evaluations == 2 ** 10 and float(result.stderr.max()) == 0.0


@pytest.mark.parametrize("method", ["permutation", "antithetic", "leverage", "regression_adjusted", "stratified"])
def test_sampled_estimators_unbiased_with_calibrated_stderr(method):
    game = make_game(10)  # 300 evaluations < 2^10: leverage cannot enumerate every size
    exact = exact_shapley(game, 10)
    budget = 900 if method == "antithetic" else 300  # 50 pairs: enough for the stderr of pair means
    runs = [estimate_shapley(game, 10, method, n_evaluations=budget, seed=seed) for seed in range(SEEDS)]
    values = torch.stack([r.values for r in runs])
    stderr = torch.stack([r.stderr for r in runs])
    z = (values - exact).abs() / stderr
    assert float((z > 3).double().mean()) < 0.05  # 0.3% for a normal error with an exact stderr
    spread = values.std(0)
    assert ((values.mean(0) - exact).abs() <= 5 * spread / math.sqrt(SEEDS)).all()
    ratio = stderr.mean(0) / spread
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio
    assert all(r.n_evaluations <= budget for r in runs)


def test_new_estimators_beat_permutation_sampling_at_equal_budget():
    game = make_game(10)
    exact = exact_shapley(game, 10)

    def rmse(method):
        errors = [estimate_shapley(game, 10, method, n_evaluations=300, seed=s).values - exact for s in range(20)]
        return float(torch.stack(errors).square().mean().sqrt())
    base = rmse("permutation")  # 0.02 here; leverage 0.004, regression_adjusted 0.007 (measured)
    for method in ("leverage", "regression_adjusted"):
        assert rmse(method) < 0.5 * base, method


def test_target_stderr_stops_early_and_reports_it():
    game = make_game()
    loose = estimate_shapley(game, F, "permutation", n_evaluations=5000, target_stderr=0.05, seed=0)
    tight = estimate_shapley(game, F, "permutation", n_evaluations=5000, target_stderr=0.005, seed=0)
    assert float(loose.stderr.max()) <= 0.05 and loose.n_evaluations < tight.n_evaluations <= 5000 + 700


def owen_by_enumeration(game, groups, num):
    phi = torch.zeros(num, dtype=torch.float64)
    for gi, group in enumerate(groups):
        others = [j for j in range(len(groups)) if j != gi]
        for t in range(len(others) + 1):
            for chosen in itertools.combinations(others, t):
                w_t = math.factorial(t) * math.factorial(len(groups) - t - 1) / math.factorial(len(groups))
                base = [f for j in chosen for f in groups[j]]
                for i in group:
                    rest = [f for f in group if f != i]
                    for s in range(len(rest) + 1):
                        for subset in itertools.combinations(rest, s):
                            w_s = math.factorial(s) * math.factorial(len(group) - s - 1) / math.factorial(len(group))
                            rows = torch.zeros(2, num, dtype=torch.bool)
                            rows[:, base + list(subset)] = True
                            rows[0, i] = True
                            v = game(rows)
                            phi[i] += w_t * w_s * (v[0] - v[1])
    return phi


@pytest.mark.parametrize("as_parent", [False, True])
def test_owen_values_over_a_hierarchy(as_parent):
    game = make_game()
    groups = [[0, 1, 2], [3, 4], [5, 6, 7]]
    hierarchy = [0, 0, 0, 1, 1, 2, 2, 2] if as_parent else groups
    exact = owen_by_enumeration(game, groups, F)
    assert (exact - exact_shapley(game, F)).abs().max() > 1e-3  # Owen differs from Shapley here
    result = estimate_shapley(game, F, "owen", n_evaluations=20000, seed=1, hierarchy=hierarchy)
    assert ((result.values - exact).abs() <= 5 * result.stderr).all()
    torch.testing.assert_close(result.values.sum(), exact.sum(), rtol=0, atol=1e-10)  # efficient per order
    assert (result.values - exact).abs().max() < 0.01


def test_owen_deeper_tree_and_flat_tree_is_shapley():
    game = make_game()
    flat = estimate_shapley(game, F, "owen", n_evaluations=20000, seed=2, hierarchy=[[i] for i in range(F)])
    assert ((flat.values - exact_shapley(game, F)).abs() <= 5 * flat.stderr).all()
    paths = hierarchy_paths([[0, [1, 2]], [3, 4], [[5, 6], 7]], F)
    assert paths.shape == (2, F) and paths[0].tolist() == [0, 0, 0, 1, 1, 2, 2, 2]
    assert paths[1, 1] == paths[1, 2] and paths[1, 5] == paths[1, 6] and len(set(paths[1].tolist())) == 6


def test_hierarchy_from_two_slic_levels():
    fine = torch.arange(8).repeat_interleave(4).view(2, 4, 4)
    coarse = (fine // 3) * 5  # any ids; the majority coarse region of every fine one
    coarse[0, 0, 0] = 99  # one stray voxel does not move its fine region
    assert hierarchy_from_masks(fine, coarse).tolist() == [0, 0, 0, 1, 1, 1, 2, 2]


@pytest.mark.parametrize("kwargs,match", [
    (dict(method="nope"), "method must be one of"),
    (dict(n_samples=0), "n_samples must be an int >= 1"),
    (dict(n_samples=3, n_evaluations=10), "not both"),
    (dict(target_stderr=-1), "target_stderr must be"),
    (dict(method="owen"), "needs hierarchy"),
    (dict(hierarchy=[0, 1]), "only used by method 'owen'"),
    (dict(method="owen", hierarchy=[[0, 1], [2]]), "leaves must be exactly"),
])
def test_bad_arguments(kwargs, match):
    calls = []

    def game(rows):
        calls.append(rows)
        return rows.double().sum(-1)
    with pytest.raises(ValueError, match=match):
        estimate_shapley(game, 4, **kwargs)
    assert not calls


def tiny_model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(32, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).double()


def test_model_estimator_matches_exact_and_broadcasts_to_the_input():
    net = tiny_model()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    mask = torch.randint(0, 6, (1, 1, 4, 4))  # shared by both channels
    exact = exact_shapley(ModelGame(net, x, 0.5, mask, target=1), 6)
    est = ShapleyEstimator(net, method="leverage")
    attr = est.attribute(x, baselines=0.5, target=1, feature_mask=mask, n_evaluations=64, seed=0)
    torch.testing.assert_close(est.last_values, exact, rtol=0, atol=1e-10)
    assert attr.shape == x.shape and est.last_stderr.shape == x.shape
    torch.testing.assert_close(attr, exact[mask.expand_as(x)], rtol=0, atol=1e-10)
    assert est.last_n_evaluations == 64


def test_default_is_captums_estimator_and_cost():
    net = tiny_model()
    x = torch.randn(1, 2, 4, 4, dtype=torch.float64)
    mask = torch.arange(32).view(1, 2, 4, 4) // 4
    est = ShapleyEstimator(net)
    est.attribute(x, target=0, feature_mask=mask, seed=0)
    assert est.method == "permutation" and est.last_n_evaluations == 25 * (8 - 1) + 2
    exact = exact_shapley(ModelGame(net, x, 0.0, mask, target=0), 8)
    assert ((est.last_values - exact).abs() <= 5 * est.last_values_stderr).all()


def test_model_estimator_bad_inputs_fail_before_the_model():
    calls = []

    def model(x):
        calls.append(x)
        return x.flatten(1).sum(1)
    est = ShapleyEstimator(model, method="antithetic")
    x = torch.randn(2, 4)
    with pytest.raises(ValueError, match="one example"):
        est.attribute(x)
    with pytest.raises(ValueError, match="feature_mask ids must be >= 0"):
        est.attribute(x[:1], feature_mask=torch.tensor([[-1, 0, 1, 2]]))
    with pytest.raises(ValueError, match="target must be"):
        est.attribute(x[:1], target=-2)
    assert not calls
    with pytest.raises(ValueError, match="method must be one of"):
        ShapleyEstimator(model, method="svarm")


def test_kernel_shap_leverage_sampler():
    net = tiny_model().float()
    x = torch.randn(1, 2, 4, 4)
    mask = torch.randint(0, 7, (1, 2, 4, 4))
    exact = exact_shapley(ModelGame(net.double(), x.double(), 0.0, mask, target=2), 7)
    coefs = KernelShap(net.float()).attribute(x, target=2, feature_mask=mask, n_samples=200, sampler="leverage",
                                              return_input_shape=False)
    torch.testing.assert_close(coefs[0].double(), exact, rtol=0, atol=1e-5)  # float32 model
    with pytest.raises(ValueError, match="sampler must be"):
        KernelShap(net).attribute(x, target=2, feature_mask=mask, sampler="fast")


def test_every_method_is_listed():
    assert set(METHODS) == {"permutation", "antithetic", "leverage", "kernel", "regression_adjusted", "stratified",
                            "owen"}


def test_leverage_spends_the_whole_budget_on_distinct_coalitions():
    from mmxai_fast.estimators.kernel import LeverageState

    seen = []

    def game(rows):
        seen.append(rows.clone())
        return rows.double().sum(-1)
    for budget, paired in ((60, True), (24, False), (200, True)):  # F = 12: 11 unknowns
        seen.clear()
        state = LeverageState(game, 12, torch.Generator().manual_seed(0), "cpu")
        state.step(budget - 2)
        rows = torch.cat(seen)
        assert state.paired is paired
        assert state.n_evaluations == budget == rows.shape[0]
        assert torch.unique(rows, dim=0).shape[0] == rows.shape[0]  # no coalition twice
        phi, _ = state.estimate()
        assert torch.allclose(phi, torch.ones(12, dtype=torch.float64), atol=1e-9)  # additive game: exact


def test_paired_sampling_thresholds():
    from mmxai_fast.estimators.kernel import paired_sampling

    # F = 12: 11 unknowns; pairs = (evaluations - 2) // 2
    assert paired_sampling(12, 18)       # 8 pairs < 11: minimum-norm, pairs
    assert not paired_sampling(12, 24)   # 11 pairs: nearly singular with pairs
    assert not paired_sampling(12, 34)   # 16 pairs < 16.5
    assert paired_sampling(12, 36)       # 17 pairs
