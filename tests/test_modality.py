import math

import pytest
import torch
from scipy import stats

from mmxai_fast.attr import AttributionInputError, ShapleyValues
from mmxai_fast.models import VGG3D
from mmxai_fast.modality import (CumulativeSaliency, ModalityDropout, aggregate_abs_gradient, apply_modality_drops,
                                 exact_shapley_from_subsets, modality_censorship, modality_dropout_distribution,
                                 sample_modality_drops, saliency_aggregates)

# --------------------------------------------------------------------------- modality dropout


def test_exact_distribution_is_the_papers():
    probs = modality_dropout_distribution(0.25, 4)
    # 0.75^4 + 0.25^4, 4 * 0.25 * 0.75^3, 6 * 0.25^2 * 0.75^2, 4 * 0.25^3 * 0.75, 0
    expected = torch.tensor([0.31640625 + 0.00390625, 0.421875, 0.2109375, 0.046875, 0.0], dtype=torch.float64)
    torch.testing.assert_close(probs, expected, rtol=0, atol=1e-15)
    percent = (probs * 100).tolist()
    assert [round(percent[0]), round(percent[1]), round(percent[2]), round(percent[3], 1), percent[4]] == \
        [32, 42, 21, 4.7, 0.0]  # the paper's 32 / 42 / 21 / 4.7 / 0 %
    assert float(probs.sum()) == pytest.approx(1.0, abs=1e-15)


def _dropped_counts(drops, m):
    return torch.bincount(drops.sum(1), minlength=m + 1)


def test_sampled_counts_pass_a_chi_square_test():
    n, m = 2_000_000, 4
    drops = sample_modality_drops(n, m, 0.25, generator=torch.Generator().manual_seed(1234))
    counts = _dropped_counts(drops, m)
    assert int(counts[4]) == 0  # never all four
    probs = modality_dropout_distribution(0.25, m)
    _, p_value = stats.chisquare(counts[:4].numpy(), (probs[:4] * n).numpy())
    assert p_value > 1e-3
    # The test has power: resampling the all-dropped draws instead of keeping all modalities
    # (renormalised binomial) is rejected at this sample size.
    binomial = torch.tensor([math.comb(4, k) * 0.25 ** k * 0.75 ** (4 - k) for k in range(4)], dtype=torch.float64)
    _, p_wrong = stats.chisquare(counts[:4].numpy(), (binomial / binomial.sum() * n).numpy())
    assert p_wrong < 1e-6
    # Each modality is dropped with the same marginal probability, 0.25 - 0.25^4.
    per_modality = drops.double().mean(0)
    torch.testing.assert_close(per_modality, torch.full((4,), 0.25 - 0.25 ** 4, dtype=torch.float64), rtol=0, atol=2e-3)


def test_dropout_zeroes_whole_modalities_and_rescales_exactly():
    drop = ModalityDropout(0.25, num_modalities=4, channel_dim=1, batch_dim=0, generator=torch.Generator().manual_seed(0))
    x = torch.rand(512, 20, 3, 3) + 0.5  # 4 sequences x 5 slices
    out = drop(x)
    drops = drop.last_drops
    assert drops.shape == (512, 4) and not bool(drops.all(1).any())
    k = drops.sum(1)
    scale = (4.0 / (4 - k).double()).float()  # 1 / (1 - k / 4)
    for n in range(512):
        for mod in range(4):
            block, source = out[n, 5 * mod:5 * mod + 5], x[n, 5 * mod:5 * mod + 5]
            if drops[n, mod]:
                assert bool((block == 0).all())
            else:
                assert torch.equal(block, source * scale[n])
    assert set(k.tolist()) == {0, 1, 2, 3}


def test_dropout_single_sample_and_layouts():
    x = torch.rand(8, 5, 5)  # one sample, 4 modalities x 2 slices, channel_dim 0
    out = apply_modality_drops(x, torch.tensor([False, True, False, False]), channel_dim=0)
    assert bool((out[2:4] == 0).all())
    torch.testing.assert_close(out[:2], x[:2] * (4 / 3), rtol=1e-6, atol=0)
    # batch dim after the channel dim: (C, N, ...)
    x_cn = torch.rand(4, 3, 6)
    drops = torch.tensor([[True, False, False, False], [False, False, False, False], [False, True, True, False]])
    out = apply_modality_drops(x_cn, drops, channel_dim=0, batch_dim=1)
    assert bool((out[0, 0] == 0).all()) and torch.equal(out[:, 1], x_cn[:, 1])
    torch.testing.assert_close(out[3, 2], x_cn[3, 2] * 2.0)
    torch.testing.assert_close(out[1, 0], x_cn[1, 0] * (4 / 3))
    # p = 0 never drops; p = 1 would drop all, so nothing is dropped
    for p in (0.0, 1.0):
        torch.testing.assert_close(ModalityDropout(p, 4, channel_dim=1, batch_dim=0)(x_cn.transpose(0, 1)),
                                   x_cn.transpose(0, 1))


def test_dropout_bad_arguments():
    with pytest.raises(ValueError, match="p must be a probability in \\[0, 1\\], got 1.5"):
        ModalityDropout(1.5)
    with pytest.raises(ValueError, match="num_modalities must be an int >= 1"):
        ModalityDropout(0.25, 0)
    x = torch.rand(2, 6, 4)
    with pytest.raises(ValueError, match="x must have a multiple of num_modalities=4 channels at dim 1, got 6"):
        ModalityDropout(0.25, 4, channel_dim=1, batch_dim=0)(x)
    with pytest.raises(TypeError, match="x must have a floating dtype"):
        apply_modality_drops(x.long(), torch.zeros(3, dtype=torch.bool), channel_dim=1)
    with pytest.raises(ValueError, match="keep at least one modality"):
        apply_modality_drops(x, torch.ones(3, dtype=torch.bool), channel_dim=1)
    with pytest.raises(ValueError, match=r"drops must have shape \(2, 'M'\)"):
        apply_modality_drops(x, torch.zeros(3, dtype=torch.bool), channel_dim=1, batch_dim=0)
    with pytest.raises(TypeError, match="drops must be a bool tensor"):
        apply_modality_drops(x, torch.zeros(3), channel_dim=1)


# --------------------------------------------------------------------------- censorship / Shapley


class _MeansModel(torch.nn.Module):
    """output = sum_m w_m * mean(x_m) + c * mean(x_0) * mean(x_1): additive plus one interaction."""

    def __init__(self, weights, interaction=0.0):
        super().__init__()
        self.weights = torch.tensor(weights, dtype=torch.float64)
        self.interaction = interaction
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        means = x.double().reshape(x.shape[0], len(self.weights), -1).mean(-1)  # [N, M]
        out = means @ self.weights + self.interaction * means[:, 0] * means[:, 1]
        return out[:, None]


def test_exact_shapley_of_an_additive_game_with_an_interaction():
    x = torch.rand(3, 4 * 2, 5, 5, dtype=torch.float64) + 0.1
    model = _MeansModel([1.0, -2.0, 0.5, 3.0], interaction=4.0)
    result = modality_censorship(model, x, 4, target=0)
    means = x.reshape(3, 4, -1).mean(-1)
    expected = means * torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    expected[:, :2] += 4.0 * means[:, 0:1] * means[:, 1:2] / 2  # the interaction, split evenly
    torch.testing.assert_close(result.shapley, expected.t(), rtol=1e-12, atol=1e-12)
    assert result.values.shape == (16, 3) and result.shapley.shape == (4, 3)
    torch.testing.assert_close(result.shapley.sum(0), result.values[-1] - result.values[0])
    assert model.calls == 2  # the full input once, then the 15 other subsets in one batch
    torch.testing.assert_close(result.value(["m0", "m2"]), means[:, 0] * 1.0 + means[:, 2] * 0.5)
    torch.testing.assert_close(result.censorship()[3], means[:, 3] * 3.0)


def test_matches_shapley_values_with_a_per_modality_mask():
    torch.manual_seed(0)
    model = VGG3D(in_channels=4, num_classes=3, widths=(4, 8), hidden=8).eval()
    x = torch.randn(2, 4, 8, 8, 8)
    result = modality_censorship(model, x, 4, target=1, perturbations_per_eval=16)
    mask = torch.arange(4).reshape(1, 4, 1, 1, 1)
    captum_like = ShapleyValues(model).attribute(x, target=1, feature_mask=mask, perturbations_per_eval=8)
    per_modality = captum_like[:, :, 0, 0, 0].t()  # [M, N]
    # float32 model outputs on batches of different sizes: tolerance of float32 sums of outputs.
    torch.testing.assert_close(result.shapley.float(), per_modality, rtol=1e-4, atol=1e-5)


def test_metric_table_and_baseline_tensor():
    torch.manual_seed(0)
    x = torch.rand(6, 3, 4, 4)
    model = _MeansModel([1.0, 1.0, 1.0])
    baseline = torch.full((1, 3, 1, 1), 0.5)
    result = modality_censorship(model, x, 3, baselines=baseline, target=0, names=["T1", "T2", "FLAIR"],
                                 metric=lambda out: out.mean(), perturbations_per_eval=1)
    means = x.double().reshape(6, 3, -1).mean(-1).mean(0)
    torch.testing.assert_close(result.shapley, means - 0.5)
    assert result.values.shape == (8,) and model.calls == 8
    rows = result.table()
    assert rows[0]["modalities"] == () and rows[-1]["modalities"] == ("T1", "T2", "FLAIR")
    assert rows[5]["modalities"] == ("T1", "FLAIR")
    assert rows[5]["value"] == pytest.approx(float(means[0] + means[2] + 0.5))
    text = str(result)
    assert "T1+T2+FLAIR" in text and "(none)" in text and "Shapley FLAIR" in text


def test_exact_shapley_from_subsets_checks():
    values = torch.tensor([0.0, 1.0, 2.0, 5.0])  # v(a)=1, v(b)=2, v(ab)=5
    torch.testing.assert_close(exact_shapley_from_subsets(values), torch.tensor([2.0, 3.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="2\\^M rows"):
        exact_shapley_from_subsets(torch.zeros(6))


def test_censorship_bad_arguments():
    model = _MeansModel([1.0, 1.0])
    x = torch.rand(2, 4, 3)
    with pytest.raises(ValueError, match="multiple of num_modalities=3 channels at dim 1, got 4"):
        modality_censorship(model, x, 3)
    with pytest.raises(ValueError, match="channel_dim must not be 0"):
        modality_censorship(model, x, 2, channel_dim=0)
    with pytest.raises(ValueError, match="num_modalities must be <= 16"):
        modality_censorship(model, torch.rand(1, 17, 2), 17)
    with pytest.raises(ValueError, match="names must be 2 distinct names"):
        modality_censorship(model, x, 2, names=["a", "a"])
    with pytest.raises(AttributionInputError, match="baselines\\[0\\] must be broadcastable"):
        modality_censorship(model, x, 2, baselines=torch.zeros(5))


# --------------------------------------------------------------------------- saliency aggregates


def test_aggregate_abs_gradient_layouts():
    g = torch.randn(2, 20, 6, 7)  # 2.5D: 4 modalities x 5 slices
    agg = aggregate_abs_gradient(g, 4)
    assert agg.shape == (2, 4, 5) and agg.dtype == torch.float64
    for n in range(2):
        for m in range(4):
            for z in range(5):
                assert float(agg[n, m, z]) == pytest.approx(float(g[n, 5 * m + z].abs().double().sum()), rel=1e-12)
    g3 = torch.randn(2, 8, 3, 4, 5)  # 3D: 4 modalities x 2 channels, z = dim 2
    agg3 = aggregate_abs_gradient(g3, 4, slice_dim=2)
    expected = g3.abs().double().reshape(2, 4, 2, 3, 20).sum((2, 4))
    torch.testing.assert_close(agg3, expected)
    channels_last = aggregate_abs_gradient(g3.movedim(1, -1), 4, channel_dim=-1, slice_dim=1)
    torch.testing.assert_close(channels_last, expected)
    with pytest.raises(ValueError, match="slice_dim must differ"):
        aggregate_abs_gradient(g3, 4, slice_dim=1)


def test_saliency_aggregates_of_a_linear_model():
    w = torch.randn(8, 3, 3)

    def model(x):
        return (x * w).flatten(1).sum(1, keepdim=True).repeat(1, 2) * torch.tensor([1.0, 3.0])

    x = torch.rand(5, 8, 3, 3)
    result = saliency_aggregates(model, x, target=1, num_modalities=4)
    expected = (3 * w.abs()).double().reshape(4, 2, 9).sum(-1)  # dL/dx = 3 w
    torch.testing.assert_close(result.per_slice, expected.expand(5, 4, 2))
    torch.testing.assert_close(result.per_modality, expected.sum(-1).expand(5, 4))
    torch.testing.assert_close(result.total, expected.sum().expand(5))
    labels = torch.rand(5, 2)
    with_loss = saliency_aggregates(model, x, labels, num_modalities=4, loss_fn=torch.nn.functional.mse_loss)
    xg = x.clone().requires_grad_(True)
    torch.nn.functional.mse_loss(model(xg), labels).backward()
    torch.testing.assert_close(with_loss.per_slice, aggregate_abs_gradient(xg.grad, 4))


def test_cumulative_tracker_in_a_training_loop():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(20, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 2))
    reference = [p.detach().clone() for p in model.parameters()]
    batches = [(torch.randn(3, 20, 8, 8), torch.randint(0, 2, (3,))) for _ in range(4)]
    tracker = CumulativeSaliency(num_modalities=4)

    def train(track):
        net = model
        for p, r in zip(net.parameters(), reference):
            p.data.copy_(r)
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        grads, param_grads = [], []
        for x, y in batches:
            x = tracker.watch(x) if track else x.clone().requires_grad_(True)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(x), y).backward()
            grads.append(x.grad.clone())
            param_grads.append([p.grad.clone() for p in net.parameters()])
            opt.step()
        return grads, param_grads

    grads, param_grads = train(track=True)
    _, untracked_param_grads = train(track=False)
    for a, b in zip(param_grads, untracked_param_grads):  # the hook leaves training unchanged
        for ga, gb in zip(a, b):
            assert torch.equal(ga, gb)
    expected = sum(aggregate_abs_gradient(g, 4).sum(0) for g in grads)
    assert tracker.iterations == 4
    torch.testing.assert_close(tracker.per_slice, expected)
    torch.testing.assert_close(tracker.per_modality, expected.sum(-1))
    history = tracker.history
    assert history.shape == (4, 4) and bool((history[1:] >= history[:-1]).all())
    torch.testing.assert_close(history[0], aggregate_abs_gradient(grads[0], 4).sum((0, 2)))
    tracker.reset()
    assert tracker.iterations == 0 and tracker.per_modality is None and tracker.history.shape == (0, 4)
