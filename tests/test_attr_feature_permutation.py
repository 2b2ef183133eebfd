"""mmxai_fast.attr.FeaturePermutation against Captum 0.9: same permutations at the same seed."""
import logging
from unittest import mock

import captum.attr as ca
import pytest
import torch

import mmxai_fast
import mmxai_fast.attr.feature_permutation as fp_module
from mmxai_fast.attr import AttributionInputError, FeatureAblation, FeaturePermutation, patch_captum, unpatch_captum

from attr_models import assert_close_tree, ConvNet, GRID, signature_params, TupleMLP

ATOL, RTOL = 1e-5, 1e-4  # float32 model outputs, batched differently from Captum


def _assert_close(ours, theirs):
    assert_close_tree(ours, theirs, ATOL, RTOL)


def _both(forward, inputs, seed=0, captum_kwargs=None, **kwargs):
    torch.manual_seed(seed)
    expected = ca.FeaturePermutation(forward).attribute(inputs, **{**kwargs, **(captum_kwargs or {})})
    torch.manual_seed(seed)
    return FeaturePermutation(forward).attribute(inputs, **kwargs), expected


@pytest.mark.parametrize("n,ppe,target,mask", [
    (2, 1, 0, GRID), (4, 3, [0, 2, 1, 1], GRID), (3, 5, torch.tensor([2, 0, 1]), None), (5, 2, 1, GRID % 4),
    (3, 1, torch.tensor(1), GRID.expand(3, 1, 3, 1, 4) % 5),  # per-example mask
])
def test_matches_captum_same_seed_conv(n, ppe, target, mask):
    x = torch.randn(n, 1, 3, 4, 4)
    ours, theirs = _both(ConvNet(), x, target=target, feature_mask=mask, perturbations_per_eval=ppe)
    _assert_close(ours, theirs)
    assert theirs.abs().max() > 0


@pytest.mark.parametrize("ppe,mask", [
    (1, None),
    (2, (torch.tensor([[0, 1, 1, 2]]), torch.tensor([[[3, 4, 0, 0, 4]]]))),  # id 0 in both tensors
    (3, (torch.tensor([[5, 1, 1, 2]]), torch.tensor([[[3, 4, 4, 5, 0]]]))),
])
def test_matches_captum_tuple_shared_ids_and_args(ppe, mask):
    n = 4
    inputs = (torch.randn(n, 4), torch.randn(n, 1, 5))
    args = (torch.rand(n, 1) + 0.5,)
    ours, theirs = _both(TupleMLP(), inputs, target=1, additional_forward_args=args, feature_mask=mask,
                         perturbations_per_eval=ppe)
    _assert_close(ours, theirs)


def test_scalar_per_batch_and_tuple_targets():
    model = ConvNet()
    x = torch.randn(4, 1, 3, 4, 4)
    ours, theirs = _both(lambda t: model(t)[:, 0].pow(2).sum(), x, feature_mask=GRID)
    assert ours.shape == (1, 1, 3, 4, 4)
    _assert_close(ours, theirs)
    with pytest.raises(AttributionInputError, match="perturbations_per_eval must be 1"):
        FeaturePermutation(lambda t: model(t).sum()).attribute(x, feature_mask=GRID, perturbations_per_eval=2)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(6, 12), torch.nn.Unflatten(1, (3, 4)))
    xs = torch.randn(3, 6)
    for target in [(1, 2), [(0, 1), (2, 3), (1, 0)]]:
        ours, theirs = _both(net, xs, target=target, perturbations_per_eval=4)
        _assert_close(ours, theirs)


def test_auto_equals_captum_with_one_chunk():
    """"auto" takes all 6 features in one call here: Captum's draws with perturbations_per_eval=6."""
    x = torch.randn(3, 1, 3, 4, 4)
    ours, theirs = _both(ConvNet(), x, target=2, feature_mask=GRID, perturbations_per_eval="auto",
                         captum_kwargs=dict(perturbations_per_eval=6))
    _assert_close(ours, theirs)


def test_batched_calls_and_vectorised_build():
    model = ConvNet()
    calls = []
    forward = lambda t: calls.append(t.shape[0]) or model(t)  # noqa: E731
    x = torch.randn(3, 1, 3, 4, 4)
    with mock.patch.object(fp_module.torch, "randperm", wraps=torch.randperm) as draws:
        FeaturePermutation(forward).attribute(x, target=0, perturbations_per_eval=20)
    assert calls == [3, 60, 60, 24]  # initial, then 20 + 20 + 8 of the 48 features, N = 3 rows each
    assert draws.call_count >= 48  # one draw per feature, as Captum


def test_single_example_gives_zeros_like_captum(caplog):
    x = torch.randn(1, 1, 3, 4, 4)
    with caplog.at_level(logging.WARNING):
        ours, theirs = _both(ConvNet(), x, target=0, feature_mask=GRID)
    _assert_close(ours, theirs)
    assert not ours.any() and "Skipping" in caplog.text


def test_custom_perm_func_runs_captum():
    def reverse(x, mask):
        return x.flip(0) * mask + x * ~mask

    x = torch.randn(3, 1, 3, 4, 4)
    model = ConvNet()
    expected = ca.FeaturePermutation(model, perm_func=reverse).attribute(x, target=1, feature_mask=GRID)
    _assert_close(FeaturePermutation(model, perm_func=reverse).attribute(x, target=1, feature_mask=GRID), expected)


def test_signature_hierarchy_and_progress(capsys):
    assert signature_params(FeaturePermutation.attribute) == signature_params(ca.FeaturePermutation.attribute)
    assert signature_params(FeaturePermutation.__init__) == signature_params(ca.FeaturePermutation.__init__)
    perm = FeaturePermutation(ConvNet())
    assert isinstance(perm, ca.FeaturePermutation) and isinstance(perm, FeatureAblation)
    assert mmxai_fast.FeaturePermutation is FeaturePermutation
    perm.attribute(torch.randn(2, 1, 3, 4, 4), target=0, feature_mask=GRID, perturbations_per_eval=4,
                   show_progress=True)
    err = capsys.readouterr().err
    assert "Feature Permutation attribution" in err and "3/3" in err


def test_patch_captum_round_trip():
    original = ca.FeaturePermutation
    x = torch.randn(3, 1, 3, 4, 4)
    model = ConvNet()
    torch.manual_seed(4)
    expected = ca.FeaturePermutation(model).attribute(x, target=0, feature_mask=GRID)
    try:
        with patch_captum():
            from captum.attr import FeaturePermutation as patched
            from captum.attr._core.feature_permutation import FeaturePermutation as core
            assert patched is FeaturePermutation and core is FeaturePermutation
            torch.manual_seed(4)
            _assert_close(patched(model).attribute(x, target=0, feature_mask=GRID), expected)
            torch.manual_seed(4)  # Captum's own class still works while patched
            _assert_close(original(model).attribute(x, target=0, feature_mask=GRID), expected)
    finally:
        unpatch_captum()
    assert ca.FeaturePermutation is original


@pytest.mark.parametrize("kwargs,match", [
    (dict(feature_mask=torch.zeros(1, 1, 3, 4, 5, dtype=torch.long)), r"feature_mask\[0\] must be broadcastable"),
    (dict(feature_mask=GRID - 1), r"feature_mask\[0\] ids must be >= 0"),
    (dict(feature_mask=GRID.float() + 0.5), r"feature_mask\[0\] must hold whole-number ids"),
    (dict(perturbations_per_eval=0), "perturbations_per_eval"),
    (dict(target=5), r"target 5 does not index forward_func's output: .* shape \(3, 3\)"),
])
def test_bad_arguments_before_model_calls(kwargs, match):
    calls = []
    model = ConvNet()
    forward = lambda t: calls.append(1) or model(t)  # noqa: E731
    kwargs = {"target": 0, **kwargs}
    with pytest.raises(AttributionInputError, match=match):
        FeaturePermutation(forward).attribute(torch.randn(3, 1, 3, 4, 4), **kwargs)
    assert len(calls) <= (2 if "target" in match else 0)


def test_bad_model_outputs():
    x = torch.randn(3, 1, 3, 4, 4)
    model = ConvNet()
    with pytest.raises(AttributionInputError, match="must grow with the batch"):
        FeaturePermutation(lambda t: model(t)[:3]).attribute(x, target=0, feature_mask=GRID, perturbations_per_eval=2)
    with pytest.raises(AttributionInputError, match="NaN, first at model call 2"):
        FeaturePermutation(lambda t: model(t) if torch.equal(t, x) else model(t) * float("nan")).attribute(
            x, target=0, feature_mask=GRID)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA twin of the CPU tests above")
def test_cuda_same_permutations_as_cpu():
    model = ConvNet()
    x = torch.randn(4, 1, 3, 4, 4)
    torch.manual_seed(3)
    cpu = FeaturePermutation(model).attribute(x, target=1, feature_mask=GRID, perturbations_per_eval=3)
    torch.manual_seed(3)  # permutations come from the CPU generator, like Captum's
    cuda = FeaturePermutation(model.cuda()).attribute(x.cuda(), target=1, feature_mask=GRID.cuda(),
                                                      perturbations_per_eval=3)
    assert cuda.device.type == "cuda"
    torch.testing.assert_close(cuda.cpu(), cpu, atol=ATOL, rtol=RTOL)


# ---------------------------------------------------------------- the scatter path (only the dropped
# feature's elements are written; the engine's buffer keeps the input between chunks)

PPES = [1, 3, "auto"]


def _both_ppe(forward, inputs, ppe, num_features, **kwargs):
    """"auto" takes every feature in one model call on these small inputs: Captum's draws with
    perturbations_per_eval = number of features."""
    captum_ppe = num_features if ppe == "auto" else ppe
    return _both(forward, inputs, perturbations_per_eval=ppe, captum_kwargs=dict(perturbations_per_eval=captum_ppe),
                 **kwargs)


@pytest.mark.parametrize("ppe", PPES)
def test_per_example_masks_with_gaps(ppe):
    n = 4
    ids = torch.randint(0, 9, (n, 1, 3, 4, 4)) * 3  # per-example, id gaps, some ids in a few examples only
    num_features = ids.unique().numel()
    ours, theirs = _both_ppe(ConvNet(), torch.randn(n, 1, 3, 4, 4), ppe, num_features, target=[0, 2, 1, 1],
                             feature_mask=ids)
    _assert_close(ours, theirs)
    assert theirs.abs().max() > 0


@pytest.mark.parametrize("ppe", PPES)
def test_tuple_shared_ids_feature_absent_from_a_tensor(ppe):
    n = 3
    inputs = (torch.randn(n, 4), torch.randn(n, 1, 5))
    # id 0 and 4 in both, 1/2 only in the first, 6/7 only in the second, per-example second mask
    mask = (torch.tensor([[0, 1, 2, 4]]), torch.tensor([[[6, 4, 0, 7, 7]], [[0, 0, 6, 4, 7]], [[4, 6, 7, 0, 0]]]))
    args = (torch.rand(n, 1) + 0.5,)
    ours, theirs = _both_ppe(TupleMLP(), inputs, ppe, 6, target=2, additional_forward_args=args, feature_mask=mask)
    _assert_close(ours, theirs)


@pytest.mark.parametrize("ppe", [1, 3, 4, 16])
def test_model_returning_a_view_of_its_input(ppe):
    """The output aliases the reused buffer: it must be copied before the next chunk rewrites it."""
    x = torch.randn(3, 2, 6)
    mask = torch.arange(12).reshape(1, 2, 6) % 7  # 7 features: chunks of 3 + 3 + 1, 4 + 3, one of 7
    ours, theirs = _both(lambda t: t[:, 0, :3], x, target=1, feature_mask=mask, perturbations_per_eval=ppe)
    _assert_close(ours, theirs)


@pytest.mark.parametrize("ppe", [2, 3, 5])
def test_chunk_boundaries_and_model_writing_its_input(ppe):
    """A model that adds to its perturbed batch in place: the next chunk must start from the input
    again (Captum builds a fresh batch per call), whatever the chunk sizes (11 features)."""
    n = 4
    model = ConvNet()
    sizes = []

    def forward(t):
        sizes.append(t.shape[0])
        if t.shape[0] > n:
            t.add_(1.0)
        return model(t)

    mask = torch.arange(48).reshape(1, 1, 3, 4, 4) % 11
    ours, theirs = _both(forward, torch.randn(n, 1, 3, 4, 4), target=0, feature_mask=mask, perturbations_per_eval=ppe)
    _assert_close(ours, theirs)
    assert sizes[-1] == (11 % ppe or ppe) * n  # the short last chunk


def test_inference_mode_and_non_contiguous_input():
    x = torch.randn(4, 3, 4, 1, 2).permute(0, 4, 3, 1, 2)  # [4, 2, 1, 3, 4], not contiguous
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(24, 3))
    mask = GRID.expand(1, 2, 3, 1, 4)
    mask = (mask + torch.tensor([0, 6]).view(1, 2, 1, 1, 1)).transpose(2, 3)  # 12 features
    with torch.inference_mode():
        ours, theirs = _both(model, x, target=1, feature_mask=mask, perturbations_per_eval=5)
    _assert_close(ours, theirs)


def test_out_of_memory_halving_keeps_captum_permutations():
    """"auto" draws the permutations for all 6 features in one chunk; the model runs out of memory
    above 3 rows: the chunks (grown by measured throughput, or the memory cap for a fast model)
    shrink but the permutations stay those drawn for one chunk of 6 (Captum's)."""
    n, model = 3, ConvNet()
    x = torch.randn(n, 1, 3, 4, 4)
    sizes = []

    def forward(t):
        if t.shape[0] > 3 * n:
            raise torch.OutOfMemoryError("test")
        sizes.append(t.shape[0])
        return model(t)

    torch.manual_seed(5)
    theirs = ca.FeaturePermutation(model).attribute(x, target=2, feature_mask=GRID, perturbations_per_eval=6)
    torch.manual_seed(5)
    ours = FeaturePermutation(forward).attribute(x, target=2, feature_mask=GRID, perturbations_per_eval="auto")
    _assert_close(ours, theirs)
    assert sizes[0] == n and max(sizes) <= 3 * n and len(sizes) >= 3  # the failing chunks never reach the model


def test_perturbed_inputs_outside_model_calls_are_fresh():
    """Without an evaluator buffer the batch is a new tensor on every call."""
    x = torch.randn(3, 2, 6)
    mask = torch.arange(12).reshape(1, 2, 6) % 5
    engine = fp_module.ShufflePerturber((x,), (mask,), 5)
    engine.permutations = [torch.tensor([[1, 2, 0], [2, 0, 1], [1, 0, 2], [0, 2, 1], [2, 1, 0]])]
    keep = torch.ones(5, 5, dtype=torch.bool)
    keep[torch.arange(5), torch.tensor([3, 0, 4, 1, 2])] = False
    first = engine(keep)[0].reshape(5, 3, 2, 6)
    for r, f in enumerate([3, 0, 4, 1, 2]):
        shuffled = x[engine.permutations[0][f]]
        torch.testing.assert_close(first[r], torch.where(mask == f, shuffled, x), rtol=0, atol=0)
    assert not engine._states and engine(keep)[0].data_ptr() != first.data_ptr()


class _SparseModel(torch.nn.Module):
    """A dense [N, 3] input and a sparse list with its own length, one scalar per batch."""

    def forward(self, dense, sparse):
        return (dense * torch.tensor([1.0, -2.0, 0.5])).sum() + (sparse.float() * torch.arange(sparse.shape[0])).sum()


def test_sparse_list_input_is_shuffled_over_its_own_length_like_captum():
    dense = torch.tensor([[1.0, -2.0, 3.0], [2.0, -1.0, 3.0], [0.5, 4.0, -1.0]])
    sparse = torch.tensor([1, 7, 2, 4, 5, 3, 6])
    torch.manual_seed(5)
    expected = ca.FeaturePermutation(_SparseModel()).attribute((dense, sparse))
    torch.manual_seed(5)
    got = FeaturePermutation(_SparseModel()).attribute((dense, sparse))
    for g, e in zip(got, expected):
        torch.testing.assert_close(g, e.to(g.dtype))


def test_a_tensor_with_one_row_is_skipped_like_captum_or_cannot_be_shuffled():
    dense, sparse = torch.randn(3, 3), torch.tensor([4])
    ours, theirs = _both(_SparseModel(), (dense, sparse))  # Captum 0.9 skips the one-row tensor's features
    _assert_close(ours, theirs)
    assert not ours[1].any()
    algo = FeaturePermutation(_SparseModel())
    algo._min_examples_per_batch_grouped = 1  # no skipping: that feature must be shuffled, impossible
    with pytest.raises(AttributionInputError, match=r"inputs\[1\].*dim 0 must be >= 2"):
        algo.attribute((dense, sparse))
