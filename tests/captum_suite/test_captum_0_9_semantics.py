"""Captum 0.9 semantics behind the ported upstream tests, checked against Captum's own classes at
the same seed (not an upstream file): per-chunk skipping of feature groups
(``_min_examples_per_batch_grouped``), integer inputs promoted by float baselines, float masks,
Captum's Kernel SHAP draws and ``attribute_future``.
"""
import captum.attr as ca
import pytest
import torch
from captum._utils.common import _construct_future_forward

import mmxai_fast.attr as ma


def _sparse_forward(x, y):
    return (x * torch.arange(1.0, 4.0)).sum(1) + (y ** 2).sum()


SPARSE_INPUTS = (torch.randn(5, 3, generator=torch.Generator().manual_seed(1)), torch.tensor([[1.5, -2.0]]))
SPARSE_MASKS = (torch.tensor([[0, 1, 2]]), torch.tensor([[2, 3]]))  # id 2 spans both tensors


def _same(ours, theirs):
    for a, b in zip(ours, theirs):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("ppe", [1, 2, 3])
def test_permutation_skips_chunks_holding_a_feature_of_a_one_row_tensor(ppe):
    """Ids 2 and 3 live in the one-row tensor: Captum skips every chunk holding one of them
    (with ppe 2 that drops id 1's chunk too) and draws no permutation for it."""
    results = []
    for cls in (ma.FeaturePermutation, ca.FeaturePermutation):
        torch.manual_seed(3)
        results.append(cls(_sparse_forward).attribute(SPARSE_INPUTS, feature_mask=SPARSE_MASKS,
                                                      perturbations_per_eval=ppe))
    _same(*results)
    assert bool((results[0][1] == 0).all())
    assert bool((results[0][0][:, 0] != 0).all()) == (ppe < 3)  # ppe 3: [0, 1, 2] and [3] both skipped


def test_ablation_min_examples_per_batch_grouped_as_captum():
    results = []
    for cls in (ma.FeatureAblation, ca.FeatureAblation):
        algo = cls(_sparse_forward)
        algo._min_examples_per_batch_grouped = 2
        results.append(algo.attribute(SPARSE_INPUTS, feature_mask=SPARSE_MASKS, perturbations_per_eval=2))
    _same(*results)


def _mixed_forward(a, b):
    assert a.dtype in (torch.int64, torch.float32) and b.dtype is torch.bool
    return a.float().sum(1) * 3 + b.float().sum(1)


@pytest.mark.parametrize("ppe", [1, 3])
@pytest.mark.parametrize("baseline", [0.25, torch.tensor([[0.5, 1.5, -1.0]])])
def test_integer_input_with_float_baseline_as_captum(ppe, baseline):
    inputs = (torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([[True, False], [True, True]]))
    mask = (torch.tensor([[0, 1, 1]]), torch.tensor([[2, 3]]))
    results = [cls(_mixed_forward).attribute(inputs, baselines=(baseline, False), feature_mask=mask,
                                             perturbations_per_eval=ppe)
               for cls in (ma.FeatureAblation, ca.FeatureAblation)]
    _same(*results)


def test_whole_number_float_mask_groups_across_tensors_as_captum():
    x = (torch.randn(6, 2, 2), torch.randn(6, 3))
    masks = (torch.tensor([[[0.0, 1.0], [1.0, 2.0]]]), torch.tensor([[2.0, 0.0, 3.0]]))

    def forward(a, b):
        return a.flatten(1).sum(1) * b[:, 0] + b.sum(1)

    results = []
    for cls in (ma.FeaturePermutation, ca.FeaturePermutation):
        torch.manual_seed(5)
        results.append(cls(forward).attribute(x, feature_mask=masks))
    _same(*results)


def test_kernel_shap_draws_captums_samples():
    model = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    x = (torch.randn(1, 4), torch.randn(1, 2))
    mask = (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[3, 4]]))

    def forward(a, b):
        return model(torch.cat((a, b), 1))

    results = []
    for cls in (ma.KernelShap, ca.KernelShap):
        torch.manual_seed(11)
        results.append(cls(forward).attribute(x, target=1, feature_mask=mask, n_samples=40))
    _same(*results)


@pytest.mark.parametrize("cls", [ma.FeatureAblation, ma.FeaturePermutation, ma.ShapleyValueSampling])
def test_attribute_future_runs_the_engine(cls):
    def forward(x):
        return x.pow(2).sum(1)

    x = torch.randn(3, 4)
    torch.manual_seed(2)
    expected = cls(forward).attribute(x)
    torch.manual_seed(2)
    future = cls(_construct_future_forward(forward)).attribute_future(x)
    assert type(future) is torch.Future
    torch.testing.assert_close(future.wait(), expected)
    with pytest.raises(AssertionError, match="must return a torch.futures.Future"):
        cls(forward).attribute_future(x)
