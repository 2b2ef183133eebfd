"""mmxai_fast.attr.Lime against Captum 0.9 (same samples at the same seed) and the torch WLS model."""
import warnings

import captum.attr as ca
import numpy as np
import pytest
import torch
from captum._utils.models.linear_model import SkLearnLinearRegression
from captum.attr._core.lime import get_exp_kernel_similarity_function
from sklearn.linear_model import LinearRegression

import mmxai_fast
from mmxai_fast.attr import AttributionInputError, Lime, TorchWeightedLinearRegression, patch_captum, unpatch_captum
from mmxai_fast.attr.linear_model import weighted_least_squares

from attr_models import assert_close_tree, ConvNet, GRID, signature_params, TupleMLP

# Same samples and weights; the Lasso fit (coordinate descent, tol 1e-4) sees float32 model
# outputs that differ from Captum's in the last bits, so coefficients agree to ~1e-6.
ATOL, RTOL = 1e-5, 1e-4


def _assert_close(ours, theirs, atol=ATOL, rtol=RTOL):
    assert_close_tree(ours, theirs, atol, rtol)


def _both(forward, inputs, seed=0, captum_kwargs=None, init=None, **kwargs):
    init = init or {}
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = ca.Lime(forward, **init).attribute(inputs, **{**kwargs, **(captum_kwargs or {})})
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ours = Lime(forward, **init).attribute(inputs, **kwargs)
    return ours, expected


@pytest.mark.parametrize("ppe,target,mask,baselines,ris", [
    (1, 0, GRID, None, True), (3, torch.tensor(2), GRID, 0.5, True), (4, [1], None, torch.randn(1, 1, 3, 4, 4), True),
    (2, 1, GRID + 3, None, False), (1, torch.tensor([2]), GRID % 4, (-0.2,), False),
])
def test_single_example_same_seed_as_captum(ppe, target, mask, baselines, ris):
    x = torch.randn(1, 1, 3, 4, 4)
    ours, theirs = _both(ConvNet(), x, target=target, feature_mask=mask, baselines=baselines, n_samples=40,
                         perturbations_per_eval=ppe, return_input_shape=ris)
    _assert_close(ours, theirs)
    assert theirs.abs().max() > 0


def test_auto_chunks_and_euclidean_kernel_same_as_captum():
    x = torch.randn(1, 1, 3, 4, 4)
    init = dict(similarity_func=get_exp_kernel_similarity_function("euclidean", 3.0))
    ours, theirs = _both(ConvNet(), x, init=init, target=1, feature_mask=GRID, n_samples=30,
                         perturbations_per_eval="auto", captum_kwargs=dict(perturbations_per_eval=1))
    _assert_close(ours, theirs)


@pytest.mark.parametrize("mask", [
    None,
    (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 4, 0, 0, 4]]])),  # id 0 in both tensors
])
def test_tuple_inputs_args_and_baselines_same_as_captum(mask):
    inputs = (torch.randn(1, 4), torch.randn(1, 1, 5))
    ours, theirs = _both(TupleMLP(), inputs, target=2, additional_forward_args=(torch.tensor([[1.5]]),),
                         feature_mask=mask, baselines=(0.25, torch.randn(1, 1, 5)), n_samples=30,
                         perturbations_per_eval=3)
    _assert_close(ours, theirs)


def test_tuple_target_same_as_captum():
    net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Unflatten(1, (2, 3)))
    ours, theirs = _both(net, torch.randn(1, 6), target=(1, 2), n_samples=30, perturbations_per_eval=3)
    _assert_close(ours, theirs)


def test_scalar_per_batch_model_same_as_captum():
    model = ConvNet()
    x = torch.randn(3, 1, 3, 4, 4)
    ours, theirs = _both(lambda t: model(t)[:, 1].sum(), x, feature_mask=GRID, n_samples=30)
    assert ours.shape == (1, 1, 3, 4, 4)
    _assert_close(ours, theirs)
    with pytest.raises(AttributionInputError, match="perturbations_per_eval must be 1"):
        Lime(lambda t: model(t).sum()).attribute(x, feature_mask=GRID, perturbations_per_eval=2)


def _linear_problem(n):
    """A linear model: LIME with an unregularised weighted fit recovers sum_{e in f} w_e (x_e - b_e)."""
    weight = torch.randn(3, 1, 3, 4, 4, dtype=torch.float64)
    model = lambda t, scale: torch.einsum("nczhw,kczhw->nk", t, weight) * scale  # noqa: E731
    x = torch.randn(n, 1, 3, 4, 4, dtype=torch.float64)
    return model, x, weight


def test_per_example_outputs_each_exact_on_linear_model():
    n = 3
    model, x, weight = _linear_problem(n)
    target = [2, 0, 1]
    base = torch.randn(1, 1, 3, 4, 4, dtype=torch.float64)
    scale = torch.tensor([[1.0], [2.0], [0.5]], dtype=torch.float64)
    kwargs = dict(target=target, feature_mask=GRID, baselines=base, additional_forward_args=(scale,), n_samples=40,
                  perturbations_per_eval=7)
    with pytest.warns(UserWarning, match="multiple inputs for Lime"):
        ours = Lime(model, interpretable_model=TorchWeightedLinearRegression()).attribute(x, **kwargs)
    contrib = (weight[target] * (x - base)) * scale.view(n, 1, 1, 1, 1)  # [n, 1, 3, 4, 4]
    ids = GRID.expand_as(contrib).reshape(n, -1)
    per_feature = torch.zeros(n, 6, dtype=torch.float64).scatter_add_(1, ids, contrib.reshape(n, -1))
    expected = torch.gather(per_feature, 1, ids).reshape(contrib.shape).float()
    _assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = ca.Lime(model, interpretable_model=SkLearnLinearRegression()).attribute(x, **kwargs)
        coefs = Lime(model, interpretable_model=TorchWeightedLinearRegression()).attribute(
            x, return_input_shape=False, **kwargs)
    _assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    _assert_close(coefs.cpu(), per_feature.float(), atol=1e-5, rtol=1e-5)


def test_per_example_first_example_same_as_captum():
    """Captum's fits draw from the generator between examples: only example 0 shares samples."""
    x = torch.randn(3, 1, 3, 4, 4)
    ours, theirs = _both(ConvNet(), x, target=1, feature_mask=GRID, n_samples=30, perturbations_per_eval=5)
    assert ours.shape == theirs.shape == x.shape
    _assert_close(ours[0], theirs[0])


def test_batched_model_calls():
    model = ConvNet()
    calls = []
    forward = lambda t: calls.append(t.shape[0]) or model(t)  # noqa: E731
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Lime(forward).attribute(torch.randn(3, 1, 3, 4, 4), target=0, feature_mask=GRID, n_samples=25,
                                perturbations_per_eval=10)
        assert calls == [3] + [9] * 8 + [3]  # the batch, then 3 samples of all 3 examples per call (<= ppe)
        calls.clear()
        Lime(forward).attribute(torch.randn(1, 1, 3, 4, 4), target=0, n_samples=25, perturbations_per_eval=10)
    assert calls == [1, 10, 10, 4]  # the first sample, then the other 24


def test_custom_similarity_runs_captum():
    def similarity(original, perturbed, sample, **kwargs):
        return float(sample.sum()) + 1.0

    x = torch.randn(1, 1, 3, 4, 4)
    ours, theirs = _both(ConvNet(), x, init=dict(similarity_func=similarity), target=0, feature_mask=GRID,
                         n_samples=20)
    _assert_close(ours, theirs)


def test_signature_hierarchy_progress_and_patch(capsys):
    assert signature_params(Lime.attribute)[:-1] == signature_params(ca.Lime.attribute)  # + background_id
    assert signature_params(Lime.__init__) == signature_params(ca.Lime.__init__)
    assert isinstance(Lime(ConvNet()), ca.Lime) and mmxai_fast.Lime is Lime
    Lime(ConvNet()).attribute(torch.randn(1, 1, 3, 4, 4), target=0, feature_mask=GRID, n_samples=9,
                              perturbations_per_eval=4, show_progress=True)
    err = capsys.readouterr().err
    assert "Lime attribution" in err and "3/3" in err
    original = ca.Lime
    try:
        with patch_captum():
            from captum.attr import Lime as patched
            from captum.attr._core.lime import Lime as core
            assert patched is Lime and core is Lime
            x = torch.randn(1, 1, 3, 4, 4)
            torch.manual_seed(2)
            theirs = original(ConvNet()).attribute(x, target=0, feature_mask=GRID)  # still Captum's own
            assert isinstance(theirs, torch.Tensor) and theirs.shape == x.shape
    finally:
        unpatch_captum()
    assert ca.Lime is original


@pytest.mark.parametrize("kwargs,match", [
    (dict(feature_mask=torch.zeros(1, 1, 3, 4, 5, dtype=torch.long)), r"feature_mask\[0\] must be broadcastable"),
    (dict(feature_mask=GRID.float()), r"feature_mask\[0\] must be an integer tensor"),
    (dict(feature_mask=(GRID, GRID)), "one tensor per input tensor"),
    (dict(n_samples=0), "n_samples must be an int >= 1"),
    (dict(perturbations_per_eval=0), "perturbations_per_eval"),
    (dict(baselines=torch.zeros(2, 1, 3, 4, 4)), r"baselines\[0\] must be broadcastable"),
    (dict(target=None), "Invalid number of outputs"),
    (dict(target=3), r"target 3 does not index forward_func's output: .* shape \(3, 3\)"),
])
def test_bad_arguments(kwargs, match):
    calls = []
    model = ConvNet()
    forward = lambda t: calls.append(1) or model(t)  # noqa: E731
    kwargs = {"target": 0, "feature_mask": GRID, **kwargs}
    with pytest.raises(AttributionInputError, match=match):
        Lime(forward).attribute(torch.randn(3, 1, 3, 4, 4), **kwargs)
    assert len(calls) <= (2 if "output" in match else 0)


def test_bad_model_outputs():
    model = ConvNet()
    x = torch.randn(1, 1, 3, 4, 4)
    with pytest.raises(AttributionInputError, match="one output per perturbed input"):
        Lime(model).attribute(x, feature_mask=GRID)
    calls = []

    def forward(t):
        calls.append(1)
        return model(t) if len(calls) == 1 else model(t) * float("nan")

    with pytest.raises(AttributionInputError, match="NaN, first at model call 2"):
        Lime(forward).attribute(x, target=0, feature_mask=GRID)


# ---------------------------------------------------------------------- torch WLS

def _sklearn_fit(x, y, w, fit_intercept=True):
    reg = LinearRegression(fit_intercept=fit_intercept).fit(x.numpy(), y.numpy(), sample_weight=w.numpy())
    return torch.as_tensor(reg.coef_), torch.as_tensor(np.asarray(reg.intercept_))


@pytest.mark.parametrize("m,f,k,fit_intercept", [(50, 6, None, True), (40, 8, 3, True), (30, 5, None, False),
                                                 (6, 10, None, True)])  # the last: rank deficient, min-norm
def test_weighted_least_squares_equals_sklearn_float64(m, f, k, fit_intercept):
    gen = torch.Generator().manual_seed(m + f)
    x = torch.randint(0, 2, (m, f), generator=gen).double()
    y = torch.randn((m,) if k is None else (m, k), generator=gen, dtype=torch.float64)
    w = torch.rand(m, generator=gen, dtype=torch.float64) + 0.1
    coef, intercept = weighted_least_squares(x, y, w, fit_intercept=fit_intercept)
    ref_coef, ref_intercept = _sklearn_fit(x, y, w, fit_intercept)
    torch.testing.assert_close(coef, ref_coef, atol=1e-9, rtol=1e-9)  # float64 solves, tolerance 1e-9
    torch.testing.assert_close(intercept, ref_intercept.reshape(intercept.shape), atol=1e-9, rtol=1e-9)


def test_weighted_least_squares_batched_and_model_object():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 2, (4, 30, 5), generator=gen).float()
    y = torch.randn(4, 30, generator=gen)
    w = torch.rand(4, 30, generator=gen)
    coef, intercept = weighted_least_squares(x, y, w)
    model = TorchWeightedLinearRegression()
    for g in range(4):
        single, bias = weighted_least_squares(x[g], y[g], w[g])
        torch.testing.assert_close(coef[g], single)
        model.fit(torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x[g], y[g], w[g]), batch_size=7))
        torch.testing.assert_close(model.representation(), single.float().unsqueeze(0))
        torch.testing.assert_close(model.bias(), bias.float().reshape(1))
        torch.testing.assert_close(model(x[g]), (x[g].double() @ single + bias).float().unsqueeze(1))
    with pytest.raises(AttributionInputError, match="non-negative"):
        weighted_least_squares(x[0], y[0], -w[0])
    with pytest.raises(AttributionInputError, match="sample_weight must have shape"):
        weighted_least_squares(x[0], y[0], w[0, :5])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA twin of the CPU tests above")
def test_cuda_per_example_exact_on_linear_model():
    model, x, weight = _linear_problem(2)
    base = torch.randn(1, 1, 3, 4, 4, dtype=torch.float64)
    scale = torch.ones(2, 1, dtype=torch.float64)
    kwargs = dict(target=[1, 2], feature_mask=GRID, baselines=base, additional_forward_args=(scale,), n_samples=40)
    cpu = _quiet_lime(model, x, **kwargs)
    gpu_model = lambda t, s: model(t.cpu(), s.cpu()).cuda()  # noqa: E731  (the weights stay on the CPU)
    cuda = _quiet_lime(gpu_model, x.cuda(), **{**kwargs, "feature_mask": GRID.cuda(), "baselines": base.cuda(),
                                                "additional_forward_args": (scale.cuda(),),
                                                "perturbations_per_eval": "auto"})
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=1e-5, rtol=1e-5)


def _quiet_lime(model, x, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return Lime(model, interpretable_model=TorchWeightedLinearRegression()).attribute(x, **kwargs)
