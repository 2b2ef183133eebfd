"""Captum's scikit-learn Lasso / LinearRegression fitted without scikit-learn (mmxai_fast.attr._sklearn_fit).

Tolerances: against scikit-learn on float64 data (the same algorithm, the same arithmetic) 1e-9 of
the largest coefficient; against Captum's own float32 fit 1e-4 of it on well-conditioned samples
(scikit-learn then computes in float32).
"""
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLasso, SkLearnLinearModel, SkLearnLinearRegression, SkLearnRidge
from torch.utils.data import DataLoader, TensorDataset

from mmxai_fast.attr._sklearn_fit import fit_without_sklearn, lasso_coordinate_descent


def _loader(x, y, w, batch_size=None):
    return DataLoader(TensorDataset(x, y, w), batch_size=batch_size or len(x))


def _problem(seed, m, f, binary=True, heavy_ends=False):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 2, (m, f), generator=g).float() if binary else torch.randn(m, f, generator=g)
    y = x @ torch.randn(f, generator=g) + 0.3 * torch.randn(m, generator=g)
    w = torch.rand(m, generator=g).add(0.05)
    if heavy_ends:  # KernelShap's rows: the full and the empty coalition at weight 1e6
        x[0], x[1], w[:2] = 1.0, 0.0, 1e6
        y = x @ torch.randn(f, generator=g) + 0.3 * torch.randn(m, generator=g)
    return x, y, w


def _fit_both(make, x, y, w, dtype):
    captum_model, ours = make(), make()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn's convergence warnings
        captum_model.fit(_loader(x.to(dtype), y.to(dtype), w.to(dtype)))
    assert fit_without_sklearn(ours, _loader(x, y, w)) is not None
    return captum_model, ours


def _rel(a, b):
    return float((a.double() - b.double()).abs().max()) / max(float(a.double().abs().max()), 1e-12)


@pytest.mark.parametrize("alpha", [1e-3, 0.01, 0.1, 1.0])
@pytest.mark.parametrize("m,f,binary", [(25, 8, True), (48, 16, True), (200, 32, True), (10, 30, False),
                                        (1000, 9, True), (3, 2, False)])
def test_lasso_matches_sklearn(alpha, m, f, binary):
    x, y, w = _problem(m * 100 + f, m, f, binary)
    reference, ours = _fit_both(lambda: SkLearnLasso(alpha=alpha), x, y, w, torch.float64)
    assert _rel(reference.representation(), ours.representation()) <= 1e-9
    assert abs(float(reference.bias()) - float(ours.bias())) <= 1e-9 * max(1.0, abs(float(reference.bias())))
    assert ours.representation().dtype == torch.float32 and ours.representation().shape == (1, f)
    reference32, _ = _fit_both(lambda: SkLearnLasso(alpha=alpha), x, y, w, torch.float32)
    assert _rel(reference32.representation(), ours.representation()) <= 1e-4


@pytest.mark.parametrize("m,f,heavy", [(32, 16, True), (48, 8, True), (25, 8, False), (12, 20, False),
                                       (200, 32, True)])
@pytest.mark.parametrize("fit_intercept", [True, False])
def test_linear_regression_matches_sklearn(m, f, heavy, fit_intercept):
    x, y, w = _problem(m + 7 * f, m, f, True, heavy)
    reference, ours = _fit_both(lambda: SkLearnLinearRegression(fit_intercept=fit_intercept), x, y, w,
                                torch.float64)
    assert _rel(reference.representation(), ours.representation()) <= 1e-7
    assert abs(float(reference.bias()) - float(ours.bias())) <= 1e-7 * max(1.0, float(reference.representation().abs().max()))


def test_rank_deficient_regression_is_minimum_norm():
    x, y, w = _problem(3, 40, 6, binary=False)
    x = torch.cat([x, x[:, :2]], 1)  # two duplicated columns
    reference, ours = _fit_both(SkLearnLinearRegression, x, y, w, torch.float64)
    assert _rel(reference.representation(), ours.representation()) <= 1e-7
    coef = ours.representation()[0]
    torch.testing.assert_close(coef[:2], coef[6:], rtol=1e-5, atol=1e-6)  # minimum norm splits the weight


def test_constant_targets_and_zero_columns():
    x, _, w = _problem(5, 30, 5)
    x[:, 2] = 1.0  # no variance after centring: coefficient 0
    y = torch.full((30,), 2.5)
    reference, ours = _fit_both(lambda: SkLearnLasso(alpha=0.01), x, y, w, torch.float64)
    assert float(ours.representation().abs().max()) == 0.0 and float(reference.representation().abs().max()) == 0.0
    assert float(ours.bias()) == pytest.approx(2.5)


def test_coordinate_descent_solves_the_lasso():
    """At the optimum the subgradient condition holds: |x_j.r| <= alpha, = alpha where w_j != 0."""
    g = torch.Generator().manual_seed(0)
    X = torch.randn(60, 10, generator=g).double().numpy()
    y = X @ np.linspace(-2, 2, 10) + 0.1 * torch.randn(60, generator=g).double().numpy()
    alpha = 0.3 * float(np.abs(X.T @ y).max())
    w = lasso_coordinate_descent(X, y, alpha=alpha, tol=1e-14, max_iter=100000)
    grad = X.T @ (y - X @ w)
    assert np.all(np.abs(grad) <= alpha * (1 + 1e-6))
    assert np.allclose(np.abs(grad[w != 0]), alpha, rtol=1e-6) and (w == 0).any() and (w != 0).any()


def test_not_converged_warns():
    x, y, w = _problem(1, 50, 20, binary=False)
    with pytest.warns(UserWarning, match="did not converge"):
        fit_without_sklearn(SkLearnLasso(alpha=1e-4, max_iter=1, tol=1e-12), _loader(x, y, w))


def test_other_models_and_settings_are_left_to_captum():
    x, y, w = _problem(2, 20, 4)
    for model in (SkLearnRidge(alpha=1.0), SkLearnLasso(alpha=0.1, positive=True),
                  SkLearnLasso(alpha=0.1, selection="random"), SkLearnLinearModel("linear_model.ElasticNet"),
                  SkLearnLinearRegression(positive=True)):
        assert fit_without_sklearn(model, _loader(x, y, w)) is None
        assert model.linear is None  # untouched

    class OwnFit(SkLearnLasso):
        def fit(self, train_data, **kwargs):
            return super().fit(train_data, **kwargs)

    assert fit_without_sklearn(OwnFit(alpha=0.1), _loader(x, y, w)) is None
    # alpha=0 passes the settings check but not the fit's: Captum's fit runs on the batches read
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        unpenalised, reference = SkLearnLasso(alpha=0.0), SkLearnLasso(alpha=0.0)
        assert fit_without_sklearn(unpenalised, _loader(x, y, w)) is not None
        reference.fit(_loader(x, y, w))
    torch.testing.assert_close(unpenalised.representation(), reference.representation())


def test_uncovered_data_falls_back_to_captum_fit_once():
    """Negative weights: read once here, then Captum's fit on the same batches (one generator draw, as Captum)."""
    x, y, w = _problem(4, 20, 4)
    w[3] = -1.0
    torch.manual_seed(5)
    captum_model = SkLearnLasso(alpha=0.1)
    captum_model.fit(_loader(x, y, w, 7))
    after_captum = torch.rand(1)
    torch.manual_seed(5)
    ours = SkLearnLasso(alpha=0.1)
    assert fit_without_sklearn(ours, _loader(x, y, w, 7)) is not None
    assert torch.equal(torch.rand(1), after_captum)
    torch.testing.assert_close(ours.representation(), captum_model.representation())


def test_generator_stream_is_captums():
    """The next draws after a fit are those after Captum's fit (Lime's later examples depend on them)."""
    x, y, w = _problem(6, 30, 6)
    torch.manual_seed(11)
    SkLearnLasso(alpha=0.01).fit(_loader(x, y, w))
    expected = torch.rand(3)
    torch.manual_seed(11)
    fit_without_sklearn(SkLearnLasso(alpha=0.01), _loader(x, y, w))
    assert torch.equal(torch.rand(3), expected)


def test_lime_and_kernel_shap_do_not_import_sklearn():
    code = textwrap.dedent("""
        import sys, torch
        from mmxai_fast.attr import KernelShap, Lime
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2)).eval()
        x = torch.randn(1, 1, 4, 4)
        mask = torch.arange(16).reshape(1, 1, 4, 4) // 4
        a = Lime(model).attribute(x, target=1, feature_mask=mask, n_samples=20)
        b = KernelShap(model).attribute(x, target=1, feature_mask=mask, n_samples=20)
        assert a.abs().sum() > 0 and b.abs().sum() > 0
        print(sorted(m for m in sys.modules if m.split(".")[0] in ("sklearn", "scipy")))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "sklearn" not in out.stdout, out.stdout


def test_screening_removes_a_feature_proven_zero():
    """A non-zero coefficient the gap-safe rule excludes is set to 0 and its part of X w leaves the residual."""
    from mmxai_fast.attr._sklearn_fit import _screen

    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    y = np.array([3.0, 0.0, 3.0])
    w = np.array([2.0, 0.5])
    R = y - X @ w
    xtr = X.T @ R
    excluded = np.zeros(2, dtype=bool)
    active = _screen([X[:, 0].copy(), X[:, 1].copy()], (X * X).sum(0), w, R, excluded, xtr,
                     dual_norm=float(np.abs(xtr).max()), gap=1e-6, alpha=1.0)
    assert active == [0] and excluded.tolist() == [False, True] and w.tolist() == [2.0, 0.0]
    np.testing.assert_allclose(R, y - X @ w)
