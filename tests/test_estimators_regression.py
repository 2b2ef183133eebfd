"""Regression-adjusted Monte Carlo and Leverage SHAP's ridge (mmxai_fast.estimators.kernel), float64.

Tolerances: identities (a rejected surrogate, full enumeration) to 1e-12 / 1e-10; the accuracy
claims are RMSE ratios over 20 seeds with a margin well outside the seed noise (measured: 0.68 on
the triple-interaction game at 200 evaluations)."""
import math

import torch

from mmxai_fast.estimators import estimate_shapley, exact_shapley
from mmxai_fast.estimators import kernel
from mmxai_fast.estimators.kernel import constrained_solve, interaction_terms

F = 10


def triple_game(rows):
    """Additive plus third and fourth order terms among the five largest features."""
    z = rows.double()
    w = torch.linspace(2.0, 0.2, F, dtype=torch.float64)
    return (z @ w + 1.5 * z[:, 0] * z[:, 1] * z[:, 2] - z[:, 1] * z[:, 3] * z[:, 4]
            + 0.8 * z[:, 0] * z[:, 2] * z[:, 3] * z[:, 4])


def noisy_additive_game(rows):
    """Additive plus a small residual that no low-order polynomial predicts (a hash of the coalition)."""
    z = rows.double()
    code = (z * 2.0 ** torch.arange(F, dtype=torch.float64)).sum(-1)
    return z @ torch.linspace(1.0, 0.1, F, dtype=torch.float64) + 0.01 * torch.sin(12345.678 * code)


def rmse(game, method, budget, seeds=20):
    exact = exact_shapley(game, F)
    errors = [estimate_shapley(game, F, method, n_evaluations=budget, seed=s).values - exact for s in range(seeds)]
    return float(torch.stack(errors).square().mean().sqrt())


def test_surrogate_with_triples_beats_leverage_shap():
    # paired Leverage SHAP is exact on pairwise games, so the gain is from the triples
    assert rmse(triple_game, "regression_adjusted", 200) < 0.8 * rmse(triple_game, "leverage", 200)


def test_rejected_surrogate_is_leverage_shap():
    for seed in range(3):
        ours = estimate_shapley(noisy_additive_game, F, "regression_adjusted", n_evaluations=200, seed=seed)
        lev = estimate_shapley(noisy_additive_game, F, "leverage", n_evaluations=200, seed=seed)
        torch.testing.assert_close(ours.values, lev.values, rtol=0, atol=1e-12)


def test_regression_adjusted_exact_when_every_size_is_enumerated():
    result = estimate_shapley(triple_game, F, "regression_adjusted", n_evaluations=2 ** F, seed=0)
    torch.testing.assert_close(result.values, exact_shapley(triple_game, F), rtol=0, atol=1e-10)


def test_regression_adjusted_stderr_is_calibrated_on_the_triple_game():
    exact = exact_shapley(triple_game, F)
    runs = [estimate_shapley(triple_game, F, "regression_adjusted", n_evaluations=200, seed=s) for s in range(30)]
    values, stderr = torch.stack([r.values for r in runs]), torch.stack([r.stderr for r in runs])
    spread = values.std(0)
    assert ((values.mean(0) - exact).abs() <= 5 * spread / math.sqrt(30) + 1e-12).all()
    ratio = stderr.mean(0) / spread
    assert ((ratio > 0.5) & (ratio < 2.0)).all(), ratio


def test_interaction_terms_fit_the_room():
    ranking = torch.tensor([4, 2, 0, 1, 3])
    pairs, triples = interaction_terms(ranking, room=4)  # K = 3: 3 pairs + 1 triple
    assert pairs.tolist() == [[4, 2], [4, 0], [2, 0]] and triples.tolist() == [[4, 2, 0]]
    pairs, triples = interaction_terms(ranking, room=1.5)  # K = 2: 1 pair, no triple
    assert pairs.tolist() == [[4, 2]] and triples.shape == (0, 3)
    assert [t.shape[0] for t in interaction_terms(ranking, room=0)] == [0, 0]


def test_leverage_ridge_shrinks_towards_the_equal_split_and_fades_with_the_rows():
    g = torch.Generator().manual_seed(0)
    rows = torch.cat((torch.ones(1, F, dtype=torch.bool), torch.zeros(1, F, dtype=torch.bool),
                      torch.rand(12, F, generator=g) < 0.5)).unsqueeze(0)
    values = triple_game(rows[0]).unsqueeze(0)
    weights = torch.ones(1, rows.shape[1], dtype=torch.float64)
    plain, shrunk = (constrained_solve(rows, values, weights, r)[0] for r in (0.0, 1e6))
    equal = (values[0, 0] - values[0, 1]) / F
    torch.testing.assert_close(shrunk, equal.expand(F), rtol=0, atol=1e-4)
    assert float((plain - equal).abs().max()) > 0.1
    torch.testing.assert_close(shrunk.sum(), values[0, 0] - values[0, 1], rtol=0, atol=1e-10)  # efficiency kept
    saved = kernel.LEVERAGE_RIDGE
    try:  # the ridge fades with the rows: at 300 evaluations it moves the estimate by < 5% of its error
        kernel.LEVERAGE_RIDGE = 0.0
        without = [estimate_shapley(triple_game, F, "leverage", n_evaluations=300, seed=s).values for s in range(5)]
    finally:
        kernel.LEVERAGE_RIDGE = saved
    exact = exact_shapley(triple_game, F)
    for seed, plain_estimate in enumerate(without):
        ridged = estimate_shapley(triple_game, F, "leverage", n_evaluations=300, seed=seed).values
        assert float((ridged - plain_estimate).norm()) < 0.05 * float((plain_estimate - exact).norm())
