"""mmxai_fast.attr.KernelShap against Captum 0.9 and exact Shapley values, and its extensions."""
import inspect
import warnings

import captum.attr as ca
import pytest
import torch

import mmxai_fast
from mmxai_fast.attr import AttributionInputError, KernelShap, Lime, ShapleyValues, patch_captum, unpatch_captum
import mmxai_fast.attr.kernel_shap as ks_module
from mmxai_fast.attr.kernel_shap import all_coalitions, kernel_shap_rows

from attr_models import ConvNet, GRID, TupleMLP

EXACT_ATOL, EXACT_RTOL = 1e-5, 1e-4  # float32 model outputs; float64 solve vs float64 Shapley sums


def _toy_game(num_features=6, seed=7):
    """Quadratic game with a small cubic term (Shapley values known from ShapleyValues)."""
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(num_features, num_features, generator=gen)
    w = torch.randn(num_features, generator=gen)

    def forward(x):
        return ((x @ a) * x).sum(1) + x @ w + 0.2 * x.prod(1)

    return forward, torch.randn(1, num_features, generator=gen)


def _quiet(func, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return func(*args, **kwargs)


@pytest.mark.parametrize("n,ppe,target,baselines", [
    (1, 1, 0, None), (3, 4, [2, 0, 1], 0.5), (2, "auto", torch.tensor([1, 2]), torch.randn(1, 1, 3, 4, 4)),
])
def test_exact_enumeration_equals_exact_shapley_conv(n, ppe, target, baselines):
    model = ConvNet()
    x = torch.randn(n, 1, 3, 4, 4)
    kwargs = dict(target=target, baselines=baselines, feature_mask=GRID, perturbations_per_eval=ppe)
    ours = _quiet(KernelShap(model).attribute, x, exact=True, **kwargs)
    exact = ShapleyValues(model).attribute(x, **kwargs)
    assert ours.shape == exact.shape == x.shape and ours.dtype == torch.float32
    torch.testing.assert_close(ours, exact, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_exact_enumeration_tuple_inputs_args_and_scalar_per_batch():
    inputs = (torch.randn(1, 4), torch.randn(1, 1, 5))
    mask = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 4, 0, 0, 4]]]))  # id 0 in both tensors
    kwargs = dict(target=1, additional_forward_args=(torch.tensor([[1.5]]),), feature_mask=mask,
                  baselines=(0.25, -1.0))
    model = TupleMLP()
    ours = KernelShap(model).attribute(inputs, exact=True, perturbations_per_eval=7, **kwargs)
    exact = ShapleyValues(model).attribute(inputs, **kwargs)
    for o, e in zip(ours, exact):
        torch.testing.assert_close(o, e, atol=EXACT_ATOL, rtol=EXACT_RTOL)
    conv = ConvNet()
    x = torch.randn(3, 1, 3, 4, 4)
    forward = lambda t: conv(t)[:, 0].pow(2).sum()  # noqa: E731
    ours = KernelShap(forward).attribute(x, exact=True, feature_mask=GRID)
    exact = ShapleyValues(forward).attribute(x, feature_mask=GRID)
    assert ours.shape == (1, 1, 3, 4, 4)
    torch.testing.assert_close(ours, exact, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_exact_auto_enumerates_only_when_it_fits():
    forward, x = _toy_game(5)
    calls = []
    counted = lambda t: calls.append(t.shape[0]) or forward(t)  # noqa: E731
    exact = ShapleyValues(forward).attribute(x)
    ours = KernelShap(counted).attribute(x, n_samples=40, exact="auto", perturbations_per_eval=64)
    assert sum(calls) == 32  # 2^5 coalitions
    torch.testing.assert_close(ours, exact, atol=1e-5, rtol=1e-5)
    calls.clear()
    KernelShap(counted).attribute(x, n_samples=20, exact="auto", perturbations_per_eval=64)
    assert sum(calls) == 20  # 2^5 > 20: sampled


def test_all_coalitions_and_sampler():
    rows, weights = all_coalitions(4, torch.device("cpu"))
    assert rows.shape == (16, 4) and rows[0].all() and not rows[1].any()
    assert len({tuple(r.tolist()) for r in rows}) == 16 and (weights[:2] == 0).all()
    sizes = rows[2:].sum(1)
    assert torch.allclose(weights[2:][sizes == 1], torch.full((4,), 3 / (4 * 1 * 3), dtype=torch.float64))
    torch.manual_seed(0)
    sampled = kernel_shap_rows(3, 2000, 5, torch.device("cpu"))
    assert sampled.shape == (3, 2000, 5) and sampled[:, 0].all() and not sampled[:, 1].any()
    counts = torch.bincount(sampled[:, 2:].sum(-1).flatten(), minlength=5).double()
    probs = torch.tensor([0, 4 / 4, 4 / 6, 4 / 6, 4 / 4], dtype=torch.float64)
    expected = probs / probs.sum() * counts.sum()
    assert ((counts - expected).abs() <= 5 * expected.sqrt() + 1).all()  # Captum's size distribution
    paired = kernel_shap_rows(1, 12, 5, torch.device("cpu"), paired=True)[0, 2:]
    assert torch.equal(paired[0::2], ~paired[1::2])


def _replaying_captum_samples(monkeypatch, captum_obj):
    """Record the samples Captum's generator yields and make ours return the same ones."""
    recorded = []
    generator = captum_obj.perturb_func

    def recording(inp, **kwargs):
        for sample in generator(inp, **kwargs):
            recorded.append(sample.cpu().bool())
            yield sample

    captum_obj.perturb_func = recording

    def replay(groups, n, num_features, device, paired=False):
        rows = torch.cat(recorded[:groups * n]).reshape(groups, n, num_features)
        del recorded[:groups * n]
        return rows.to(device)

    monkeypatch.setattr(ks_module, "kernel_shap_rows", replay)


class Grid3D(torch.nn.Module):
    """[N, 6] -> [N, 2, 3] (tuple targets)."""

    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(6, 6), torch.nn.Tanh(), torch.nn.Unflatten(1, (2, 3)))

    def forward(self, x):
        return self.net(x)


@pytest.mark.parametrize("case", ["conv", "conv_base_tensor", "tuple_args", "tuple_target", "scalar_per_batch"])
@pytest.mark.parametrize("ppe", [1, 3, "auto"])
def test_default_pipeline_equals_captum_on_captum_samples(monkeypatch, case, ppe):
    """Given Captum's samples, the default path (weights, evaluation, sklearn fit, shapes) is Captum's."""
    conv = ConvNet()
    if case.startswith("conv"):
        forward, inputs = conv, torch.randn(1, 1, 3, 4, 4)
        kwargs = dict(target=2 if case == "conv" else torch.tensor([1]), feature_mask=GRID,
                      baselines=0.3 if case == "conv" else torch.randn(1, 1, 3, 4, 4))
    elif case == "tuple_args":
        forward, inputs = TupleMLP(), (torch.randn(1, 4), torch.randn(1, 1, 5))
        kwargs = dict(target=1, additional_forward_args=(torch.tensor([[1.5]]),), baselines=(0.25, -1.0),
                      feature_mask=(torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 4, 0, 0, 4]]])))
    elif case == "tuple_target":
        forward, inputs = Grid3D(), torch.randn(1, 6)
        kwargs = dict(target=(1, 2))
    else:
        forward, inputs = (lambda t: conv(t)[:, 0].pow(2).sum()), torch.randn(3, 1, 3, 4, 4)
        kwargs = dict(feature_mask=GRID)
        ppe = 1 if ppe == 3 else ppe
    theirs_obj = ca.KernelShap(forward)
    _replaying_captum_samples(monkeypatch, theirs_obj)
    theirs = theirs_obj.attribute(inputs, n_samples=30, perturbations_per_eval=1 if ppe == "auto" else ppe, **kwargs)
    ours = KernelShap(forward).attribute(inputs, n_samples=30, perturbations_per_eval=ppe, **kwargs)
    for o, t in zip(ours if isinstance(ours, tuple) else (ours,), theirs if isinstance(theirs, tuple) else (theirs,)):
        assert o.shape == t.shape and o.dtype == t.dtype
        torch.testing.assert_close(o, t, atol=EXACT_ATOL, rtol=EXACT_RTOL)


def test_default_agrees_with_captum_statistically():
    """Same estimator, other random stream: compare the two sampling distributions."""
    forward, x = _toy_game(5, seed=3)
    ours, theirs = [], []
    for seed in range(24):
        torch.manual_seed(seed)
        ours.append(KernelShap(forward).attribute(x, n_samples=24, perturbations_per_eval=8))
        torch.manual_seed(seed)
        theirs.append(ca.KernelShap(forward).attribute(x, n_samples=24))
    ours, theirs = torch.cat(ours), torch.cat(theirs)
    stderr = (ours.var(0) / len(ours) + theirs.var(0) / len(theirs)).sqrt()
    assert ((ours.mean(0) - theirs.mean(0)).abs() <= 4 * stderr + 1e-6).all()
    ratio = ours.var(0).sum() / theirs.var(0).sum()
    assert 0.4 < float(ratio) < 2.5
    assert not torch.allclose(ours[0], ours[1])  # really sampled


def test_sampling_converges_and_torch_solver_matches_sklearn():
    model = ConvNet()
    x = torch.randn(1, 1, 3, 4, 4)
    exact = ShapleyValues(model).attribute(x, target=2, feature_mask=GRID)
    torch.manual_seed(1)
    kwargs = dict(target=2, feature_mask=GRID, n_samples=400, perturbations_per_eval="auto")
    sklearn = KernelShap(model).attribute(x, **kwargs)
    torch.manual_seed(1)
    on_device = KernelShap(model).attribute(x, solver="torch", **kwargs)
    assert (sklearn - exact).abs().max() < 0.15 * exact.abs().max()
    # Same samples; 10^6 end weights versus exact constraints: equal to ~1e-6 relative.
    torch.testing.assert_close(on_device, sklearn, atol=1e-5, rtol=1e-4)


def test_paired_sampling_lowers_error_at_equal_evaluations():
    forward, x = _toy_game(6)
    exact = ShapleyValues(forward).attribute(x, perturbations_per_eval=64)
    errors = {False: 0.0, True: 0.0}
    for seed in range(12):
        for paired in errors:
            torch.manual_seed(seed)
            estimate = KernelShap(forward).attribute(x, n_samples=24, perturbations_per_eval=24, paired=paired,
                                                     solver="torch")
            errors[paired] += float(((estimate - exact) ** 2).sum())
    assert errors[True] < 0.5 * errors[False]


def test_per_example_coefficients_and_batched_calls():
    model = ConvNet()
    calls = []
    forward = lambda t: calls.append(t.shape[0]) or model(t)  # noqa: E731
    x = torch.randn(3, 1, 3, 4, 4)
    coefs = _quiet(KernelShap(forward).attribute, x, target=[0, 1, 2], feature_mask=GRID, n_samples=64,
                   perturbations_per_eval=32, return_input_shape=False, exact=True)
    assert calls == [3] + [30] * 6 + [9]  # the batch (= the full coalition), then 63 coalitions x 3 examples
    exact = ShapleyValues(model).attribute(x, target=[0, 1, 2], feature_mask=GRID)
    torch.testing.assert_close(coefs, exact.flatten(1)[:, [0, 2, 16, 18, 32, 34]], atol=EXACT_ATOL, rtol=EXACT_RTOL)
    single = KernelShap(model).attribute(x[:1], target=0, feature_mask=GRID, return_input_shape=False, exact=True)
    assert single.shape == (1, 6)
    torch.testing.assert_close(single, coefs[:1], atol=EXACT_ATOL, rtol=EXACT_RTOL)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA twin of the CPU tests above")
def test_cuda_matches_cpu():
    model = ConvNet()
    x = torch.randn(2, 1, 3, 4, 4)
    kwargs = dict(target=[0, 2], feature_mask=GRID, baselines=0.1)
    cpu = _quiet(KernelShap(model).attribute, x, exact=True, **kwargs)
    cuda = _quiet(KernelShap(model.cuda()).attribute, x.cuda(), exact=True, perturbations_per_eval="auto",
                  **{**kwargs, "feature_mask": GRID.cuda()})
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=EXACT_ATOL, rtol=EXACT_RTOL)
    torch.manual_seed(0)
    paired = _quiet(KernelShap(model).attribute, x.cuda(), paired=True, n_samples=200, **{**kwargs,
                    "feature_mask": GRID.cuda()})
    assert (paired.cpu() - cpu).abs().max() < 0.2 * cpu.abs().max()


def test_signature_hierarchy_progress_and_patch(capsys):
    ours = inspect.signature(KernelShap.attribute).parameters.values()
    theirs = inspect.signature(ca.KernelShap.attribute).parameters.values()
    assert [(p.name, p.kind, p.default) for p in ours if p.kind != p.KEYWORD_ONLY] == \
        [(p.name, p.kind, p.default) for p in theirs]
    assert [(p.name, p.default) for p in ours if p.kind == p.KEYWORD_ONLY] == \
        [("paired", False), ("exact", False), ("solver", None), ("sampler", None), ("background_id", None)]
    assert list(inspect.signature(KernelShap.__init__).parameters) == ["self", "forward_func"]
    shap = KernelShap(ConvNet())
    assert isinstance(shap, ca.KernelShap) and isinstance(shap, Lime) and isinstance(shap, ca.Lime)
    assert mmxai_fast.KernelShap is KernelShap
    shap.attribute(torch.randn(1, 1, 3, 4, 4), target=0, feature_mask=GRID, n_samples=9, perturbations_per_eval=4,
                   show_progress=True)
    err = capsys.readouterr().err
    assert "Kernel Shap attribution" in err and "3/3" in err
    original = ca.KernelShap
    forward, x = _toy_game(4)
    try:
        with patch_captum():
            from captum.attr import KernelShap as patched
            from captum.attr._core.kernel_shap import KernelShap as core
            assert patched is KernelShap and core is KernelShap and ca.Lime is Lime
            torch.manual_seed(0)
            theirs = original(forward).attribute(x, n_samples=30)  # Captum's own class still runs
            exact = patched(forward).attribute(x, exact=True)
            assert theirs.shape == exact.shape == x.shape
    finally:
        unpatch_captum()
    assert ca.KernelShap is original


@pytest.mark.parametrize("inputs,kwargs,match", [
    (torch.randn(1, 1), {}, "at least 2 features"),
    (torch.randn(1, 21), dict(exact=True), r"allows F <= 20, got F = 21"),
    (torch.randn(1, 4), dict(paired="yes"), "paired must be a bool"),
    (torch.randn(1, 4), dict(exact="always"), "exact must be a bool or 'auto'"),
    (torch.randn(1, 4), dict(solver="sklearn", paired=True), "on-device solve"),
    (torch.randn(1, 4), dict(n_samples=1, solver="torch"), "n_samples must be >= 2"),
    (torch.randn(1, 4), dict(feature_mask=torch.tensor([[0.0, 1.0, 1.0, 2.0]])), "must be an integer tensor"),
    (torch.randn(1, 4), dict(baselines=torch.zeros(1, 5)), r"baselines\[0\] must be broadcastable"),
])
def test_bad_arguments_before_model_calls(inputs, kwargs, match):
    calls = []
    forward = lambda t: calls.append(1) or t.sum(1)  # noqa: E731
    with pytest.raises(AttributionInputError, match=match):
        KernelShap(forward).attribute(inputs, **kwargs)
    assert not calls


@pytest.mark.filterwarnings("ignore:You are providing multiple inputs")
def test_bad_model_outputs():
    model = ConvNet()
    x = torch.randn(2, 1, 3, 4, 4)
    with pytest.raises(AttributionInputError, match="Invalid number of outputs"):
        KernelShap(model).attribute(x, feature_mask=GRID)
    with pytest.raises(AttributionInputError, match=r"target 4 does not index"):
        KernelShap(model).attribute(x, target=4, feature_mask=GRID)
    with pytest.raises(AttributionInputError, match="NaN, first at model call 2"):
        KernelShap(lambda t: model(t) if torch.equal(t, x) else model(t) * float("nan")).attribute(
            x, target=0, feature_mask=GRID, exact=True)
