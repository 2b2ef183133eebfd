import pytest
import torch

from mmxai_fast.models import VQEncoderDecoder
from mmxai_fast.radiomics import (INTENSITY_STRENGTHS, VectorQuantizer, background_codeword, difference_ratio,
                                  intensity_robustness, latent_feature_ablation,
                                  latent_feature_ablation_reference, perturb_intensity,
                                  volume_codeword_histograms, volume_codeword_histograms_reference)
from helpers import CPU_BACKENDS, TOLERANCES, assert_close_to_reference

ALL_BACKENDS = ["reference"] + CPU_BACKENDS


def _cdist_argmin(z, codebook):
    """float64 nearest codeword of every position of channel-first ``z``: torch.cdist + argmin
    (argmin returns the first minimum: ties to the lowest index)."""
    flat = z.detach().double().movedim(1, -1).reshape(-1, z.shape[1])
    return torch.cdist(flat, codebook.detach().double()).argmin(1).view((z.shape[0],) + z.shape[2:])


def _quantizer(k, d, dtype=torch.float64, **kwargs):
    q = VectorQuantizer(k, d, **kwargs).to(dtype)
    if q.ema_decay is not None:
        q.ema_cluster_sum.copy_(q.codebook.detach())
    return q


# --------------------------------------------------------------------------- VectorQuantizer


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(2, 5, 3, 4), (3, 5), (1, 5, 2, 3, 4), (2, 5, 1, 1)])
def test_indices_equal_cdist_argmin(backend, shape):
    q = _quantizer(13, 5, torch.float32, backend=backend)
    z = torch.randn(shape)
    z_q, indices, _ = q(z)
    assert indices.dtype == torch.int64 and indices.shape == (shape[0],) + shape[2:]
    assert torch.equal(indices, _cdist_argmin(z, q.codebook))
    assert z_q.shape == z.shape and z_q.dtype == z.dtype
    # the straight-through output's value is the codeword itself, not z + (e - z) rounded
    assert torch.equal(z_q, q.codebook.detach()[indices].movedim(-1, 1))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ties_go_to_the_lowest_index(backend):
    q = _quantizer(9, 4, torch.float32, backend=backend)
    with torch.no_grad():
        q.codebook[6] = q.codebook[2]
        q.codebook[8] = q.codebook[2]
    z = torch.stack([q.codebook[2].detach(), q.codebook[5].detach() + 1e-3])[None].movedim(-1, 1)  # (1, 4, 2)
    _, indices, _ = q(z)
    assert indices.tolist() == [[2, 5]]


def test_non_contiguous_and_channels_last_input():
    q = _quantizer(11, 6, torch.float32)
    z = torch.randn(2, 6, 5, 7)
    expected = q(z)[1]
    assert torch.equal(q(z.contiguous(memory_format=torch.channels_last))[1], expected)
    assert torch.equal(q(torch.randn(2, 12, 5, 7)[:, ::2].copy_(z))[1], expected)


def test_straight_through_gradient_is_identity():
    q = _quantizer(7, 3)
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64, requires_grad=True)
    z_q, _, _ = q(z)
    upstream = torch.randn_like(z)
    (z_q * upstream).sum().backward()
    assert torch.equal(z.grad, upstream)
    assert q.codebook.grad is None  # the decoder's gradient does not reach the codebook


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("beta", [0.25, 1.0])
def test_loss_value_and_gradients_match_the_formula(beta, memory_format):
    q = _quantizer(7, 3, beta=beta)
    z = torch.randn(2, 3, 4, 5, dtype=torch.float64).contiguous(memory_format=memory_format).requires_grad_()
    _, indices, loss = q(z)
    e = q.codebook.detach()[indices].movedim(-1, 1)  # e_{k_i} at every position
    numel = z.numel()
    # ||sg[z_e] - e||^2 + beta ||z_e - sg[e]||^2, each averaged over all elements
    expected = ((z.detach() - e) ** 2).sum() / numel * (1 + beta)
    assert_close_to_reference(loss.detach(), expected)
    loss.backward()
    assert_close_to_reference(z.grad, beta * 2 * (z.detach() - e) / numel)
    flat_z = z.detach().movedim(1, -1).reshape(-1, 3)
    flat_e = e.movedim(1, -1).reshape(-1, 3)
    expected_codebook_grad = torch.zeros(7, 3, dtype=torch.float64).index_add_(
        0, indices.reshape(-1), 2 * (flat_e - flat_z) / numel)
    assert_close_to_reference(q.codebook.grad, expected_codebook_grad)


def _ema_reference_step(codebook, size, total, z_flat, decay, eps):
    """Plain loop: per-codeword counts and sums, EMA, Laplace-smoothed sizes."""
    k = codebook.shape[0]
    nearest = torch.cdist(z_flat, codebook).argmin(1)
    size, total = size.clone(), total.clone()
    for j in range(k):
        members = z_flat[nearest == j]
        size[j] = decay * size[j] + (1 - decay) * members.shape[0]
        total[j] = decay * total[j] + (1 - decay) * members.sum(0)
    n = size.sum()
    smoothed = (size + eps) / (n + k * eps) * n
    return total / smoothed[:, None], size, total, nearest


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_ema_update_matches_a_plain_loop(backend):
    decay, eps = 0.9, 1e-5
    q = _quantizer(6, 3, ema_decay=decay, ema_epsilon=eps, backend=backend).train()
    assert not q.codebook.requires_grad
    codebook = q.codebook.detach().clone()
    size, total = torch.zeros(6, dtype=torch.float64), codebook.clone()
    for step in range(3):
        z = torch.randn(4, 3, 2, 5, dtype=torch.float64, requires_grad=True)
        before = q.codebook.detach().clone()
        z_q, indices, loss = q(z)
        flat = z.detach().movedim(1, -1).reshape(-1, 3)
        old = codebook
        codebook, size, total, nearest = _ema_reference_step(codebook, size, total, flat, decay, eps)
        assert torch.equal(indices.reshape(-1), nearest)
        # z_q is taken from the codebook before this step's update
        assert torch.equal(z_q.detach().movedim(1, -1).reshape(-1, 3), before[nearest])
        assert_close_to_reference(q.codebook.detach(), codebook)
        assert_close_to_reference(q.ema_cluster_size, size)
        assert_close_to_reference(q.ema_cluster_sum, total)
        assert_close_to_reference(loss.detach(), 0.25 * ((flat - old[nearest]) ** 2).mean())
        loss.backward()
        assert q.codebook.grad is None
    q.eval()
    frozen = q.codebook.detach().clone()
    q(torch.randn(4, 3, 2, 5, dtype=torch.float64))
    assert torch.equal(q.codebook.detach(), frozen)  # no update in eval mode


def test_ema_matches_monai_ema_quantizer():
    vector_quantizer = pytest.importorskip("monai.networks.layers.vector_quantizer")
    monai = vector_quantizer.EMAQuantizer(spatial_dims=2, num_embeddings=16, embedding_dim=4, decay=0.95).train()
    ours = VectorQuantizer(16, 4, ema_decay=0.95).train()
    with torch.no_grad():
        ours.codebook.copy_(monai.embedding.weight)
        ours.ema_cluster_sum.copy_(monai.ema_w)
    for _ in range(3):
        z = torch.randn(3, 4, 5, 6)
        monai_z_q, monai_loss, monai_indices = monai(z)
        z_q, indices, loss = ours(z)
        assert torch.equal(indices, monai_indices)
        torch.testing.assert_close(z_q, monai_z_q)
        torch.testing.assert_close(loss, monai_loss)
        torch.testing.assert_close(ours.codebook.detach(), monai.embedding.weight)


def test_half_input_with_float32_codebook():
    q = _quantizer(10, 4, torch.float32)
    z = torch.randn(2, 4, 3, 3).half()
    z_q, indices, loss = q(z)
    assert z_q.dtype == torch.float16
    assert torch.equal(indices, _cdist_argmin(z.float(), q.codebook))


@pytest.mark.parametrize("ema_decay", [None, 0.9])
@pytest.mark.parametrize("compiler", ["eager", "aot_eager"])
def test_torch_compile_fullgraph(ema_decay, compiler):
    torch._dynamo.reset()
    eager_q = _quantizer(12, 4, torch.float32, ema_decay=ema_decay).train()
    compiled_q = _quantizer(12, 4, torch.float32, ema_decay=ema_decay).train()
    compiled_q.load_state_dict(eager_q.state_dict())
    compiled = torch.compile(compiled_q, backend=compiler, fullgraph=True)
    for _ in range(2):
        z = torch.randn(2, 4, 3, 5)
        z1, z2 = z.clone().requires_grad_(), z.clone().requires_grad_()
        expected, got = eager_q(z1), compiled(z2)
        assert torch.equal(got[1], expected[1])
        torch.testing.assert_close(got[0], expected[0])
        torch.testing.assert_close(got[2], expected[2])
        (got[0].sum() + got[2]).backward()
        (expected[0].sum() + expected[2]).backward()
        torch.testing.assert_close(z2.grad, z1.grad)
        torch.testing.assert_close(compiled_q.codebook.detach(), eager_q.codebook.detach())
    if ema_decay is None:
        torch.testing.assert_close(compiled_q.codebook.grad, eager_q.codebook.grad)


def test_quantizer_bad_arguments():
    q = VectorQuantizer(8, 4)
    with pytest.raises(ValueError, match=r"z must have shape \(B, D=4, \*spatial\), got shape \(2, 3, 5\)"):
        q(torch.randn(2, 3, 5))
    with pytest.raises(ValueError, match=r"z must have shape \(B, D=4"):
        q(torch.randn(4))
    with pytest.raises(TypeError, match="z must have a floating dtype"):
        q(torch.ones(2, 4, 3, dtype=torch.int64))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        q([[1.0] * 4])
    with pytest.raises(ValueError, match="num_codewords must be a positive int"):
        VectorQuantizer(0, 4)
    with pytest.raises(ValueError, match="dim must be a positive int"):
        VectorQuantizer(8, 2.5)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        VectorQuantizer(8, 4, beta=-1)
    with pytest.raises(ValueError, match=r"ema_decay must be None or in \[0, 1\)"):
        VectorQuantizer(8, 4, ema_decay=1.0)


# --------------------------------------------------------------------------- histograms


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 5, 4, 4), (1, 1, 1), (2, 7), (4, 0, 8, 8), (0, 3, 2)])
def test_volume_histograms_stacked_layout(backend, shape):
    indices = torch.randint(0, 19, shape)
    got = volume_codeword_histograms(indices, 19, backend=backend)
    expected = volume_codeword_histograms_reference(indices, 19)
    assert got.dtype == torch.int64 and got.shape == (shape[0], 19)
    assert torch.equal(got, expected)
    if shape[0]:
        assert torch.equal(got[0], torch.bincount(indices[0].reshape(-1), minlength=19))


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8])
def test_volume_histograms_with_volume_ids(backend, dtype):
    g = torch.Generator().manual_seed(3)
    indices = torch.randint(0, 23, (31, 4, 4), generator=g).to(dtype)
    volume_ids = torch.randint(0, 4, (31,), generator=g)
    volume_ids[volume_ids == 2] = 1  # volume 2 has no slice: a zero row
    got = volume_codeword_histograms(indices, 23, volume_ids, num_volumes=6, backend=backend)
    assert got.shape == (6, 23)
    assert torch.equal(got, volume_codeword_histograms_reference(indices, 23, volume_ids, num_volumes=6))
    assert int(got[2].sum()) == 0 and int(got[4:].sum()) == 0
    assert torch.equal(got[1], torch.bincount(indices[volume_ids == 1].reshape(-1).long(), minlength=23))
    # default V = max id + 1; slice order does not matter
    perm = torch.randperm(31, generator=g)
    assert torch.equal(volume_codeword_histograms(indices[perm], 23, volume_ids[perm], backend=backend), got[:4])


def test_volume_histograms_equal_for_both_layouts():
    indices = torch.randint(0, 512, (3, 155, 8, 8))
    stacked = volume_codeword_histograms(indices, 512)
    ids = torch.arange(3).repeat_interleave(155)
    assert torch.equal(volume_codeword_histograms(indices.view(-1, 8, 8), 512, ids), stacked)
    assert torch.equal(stacked.sum(1), torch.full((3,), 155 * 64))


def test_volume_histograms_bad_arguments():
    indices = torch.randint(0, 5, (4, 3, 2))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 5\) \(num_codewords\), got min 0 and max 7"):
        volume_codeword_histograms(torch.cat([indices.flatten(), torch.tensor([7])]).view(5, 5), 5)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        volume_codeword_histograms(indices.float(), 5)
    with pytest.raises(ValueError, match="at least 1 dim"):
        volume_codeword_histograms(torch.tensor(3), 5)
    with pytest.raises(ValueError, match=r"volume_ids must have one entry per slice of indices \(N=4\)"):
        volume_codeword_histograms(indices, 5, torch.zeros(3, dtype=torch.int64))
    with pytest.raises(ValueError, match=r"volume_ids must be in \[0, 2\) \(num_volumes\), got min 0 and max 3"):
        volume_codeword_histograms(indices, 5, torch.tensor([0, 1, 3, 0]), num_volumes=2)
    with pytest.raises(ValueError, match="volume_ids must be in"):
        volume_codeword_histograms(indices, 5, torch.tensor([0, -1, 0, 0]))
    with pytest.raises(TypeError, match="volume_ids must have an integer dtype"):
        volume_codeword_histograms(indices, 5, torch.zeros(4))
    with pytest.raises(ValueError, match="num_volumes is only used with volume_ids"):
        volume_codeword_histograms(indices, 5, num_volumes=4)
    with pytest.raises(ValueError, match="num_codewords must be a positive int"):
        volume_codeword_histograms(indices, 0)


# --------------------------------------------------------------------------- robustness


def test_difference_ratio_hand_examples():
    h = torch.tensor([2, 1, 1, 0])
    assert float(difference_ratio(torch.tensor([1, 1, 1, 1]), h)) == 0.5  # (1 + 0 + 0 + 1) / 4
    assert float(difference_ratio(h, h)) == 0.0
    assert float(difference_ratio(torch.tensor([0, 0, 0, 4]), h)) == 2.0  # every position moved
    batch = difference_ratio(torch.tensor([[2, 1, 1, 0], [0, 4, 0, 0]]), h)
    assert batch.dtype == torch.float64 and batch.tolist() == [0.0, 1.5]  # (2 + 3 + 1) / 4
    assert difference_ratio(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0])).item() == 1.0


def test_difference_ratio_bad_arguments():
    with pytest.raises(ValueError, match="h_original must have a positive sum"):
        difference_ratio(torch.tensor([[1, 0], [0, 1]]), torch.tensor([[1, 0], [0, 0]]))
    with pytest.raises(ValueError, match="same K"):
        difference_ratio(torch.ones(3), torch.ones(4))
    with pytest.raises(ValueError, match="does not broadcast"):
        difference_ratio(torch.ones(2, 3), torch.ones(3, 3))


def test_perturb_intensity_formulas():
    x = torch.tensor([-1.0, 0.0, 2.0])
    assert perturb_intensity(x, "scale", 0.5).tolist() == [-1.5, 0.0, 3.0]
    assert perturb_intensity(x, "shift", 0.5).tolist() == [-0.5, 0.5, 2.5]
    assert torch.equal(perturb_intensity(x, "scale", 0.0), x) and torch.equal(perturb_intensity(x, "shift", 0.0), x)
    with pytest.raises(ValueError, match="kind must be one of"):
        perturb_intensity(x, "gamma", 0.5)
    assert INTENSITY_STRENGTHS == (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


def _binning_encoder(x):
    """A deterministic stand-in for a VQ encoder: the channel mean of each 2x2 patch, binned
    into 10 codewords on [-2, 2]."""
    pooled = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 2)[:, 0]
    return ((pooled + 2) / 4 * 10).floor().clamp(0, 9).long()


def test_intensity_robustness_matches_a_direct_loop():
    g = torch.Generator().manual_seed(0)
    volumes = torch.randn(3, 5, 2, 6, 4, generator=g)
    calls = []

    def encode(x):
        calls.append(x.shape[0])
        return _binning_encoder(x)

    result = intensity_robustness(encode, volumes, 10, batch_size=4)
    assert result.strengths.tolist() == list(INTENSITY_STRENGTHS)
    assert result.scale.shape == result.shift.shape == (3, 11)
    assert max(calls) <= 4 and sum(calls) == 15 * (1 + 2 * 10)
    for v in range(3):
        original = torch.bincount(_binning_encoder(volumes[v]).reshape(-1), minlength=10)
        assert torch.equal(result.original[v], original)
        for t, s in enumerate(INTENSITY_STRENGTHS):
            for kind, ratios in (("scale", result.scale), ("shift", result.shift)):
                perturbed = torch.bincount(_binning_encoder(perturb_intensity(volumes[v], kind, s)).reshape(-1),
                                           minlength=10)
                expected = (perturbed - original).abs().sum().double() / original.sum()
                assert ratios[v, t].item() == pytest.approx(expected.item(), abs=1e-12)
    assert (result.scale[:, 0] == 0).all() and (result.shift[:, 0] == 0).all()
    assert (result.shift[:, -1] > 0).all()  # shifting by 1 moves a quarter of the bin range
    again = intensity_robustness(_binning_encoder, volumes, 10, strengths=[0.3], batch_size=100)
    assert torch.equal(again.scale[:, 0], result.scale[:, 3]) and torch.equal(again.shift[:, 0], result.shift[:, 3])


def test_intensity_robustness_bad_arguments():
    volumes = torch.randn(2, 3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"volumes must have shape \(V, S, C, H, W\)"):
        intensity_robustness(_binning_encoder, volumes[0], 10)
    with pytest.raises(TypeError, match="volumes must have a floating dtype"):
        intensity_robustness(_binning_encoder, volumes.long(), 10)
    with pytest.raises(ValueError, match="strengths must be a non-empty"):
        intensity_robustness(_binning_encoder, volumes, 10, strengths=[])
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        intensity_robustness(_binning_encoder, volumes, 10, batch_size=0)
    with pytest.raises(ValueError, match="encode must return integer codeword indices with one row per slice"):
        intensity_robustness(lambda x: _binning_encoder(x)[:1], volumes, 10)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 5\)"):
        intensity_robustness(_binning_encoder, volumes * 10, 5)


# --------------------------------------------------------------------------- latent ablation


def test_background_codeword_at_latent_resolution():
    indices = torch.tensor([[[4, 4, 1], [2, 2, 1], [0, 0, 0]]])
    body = torch.tensor([[[False, False, False], [False, False, True], [True, True, True]]])
    # outside the body: 4, 4, 1, 2, 2 -> 2 and 4 tie; the lowest index wins
    assert background_codeword(indices, body) == 2
    assert background_codeword(indices, body, num_codewords=7) == 2
    body[0, 0, 0] = True  # now 4 once, 2 twice
    assert background_codeword(indices, body) == 2
    assert background_codeword(indices, torch.zeros_like(body)) == 0  # 0 is the most frequent overall


def test_background_codeword_from_an_image_resolution_mask():
    indices = torch.tensor([[[3, 5], [5, 1]], [[3, 3], [2, 2]]])
    body = torch.zeros(2, 8, 6, dtype=torch.bool)  # 4 x 3 pixels per latent cell
    body[0, 0, 0] = True  # one body pixel makes cell (0, 0) of image 0 part of the body
    body[1, 4:, :3] = True  # cell (1, 0) of image 1
    # outside: image 0 -> 5, 5, 1; image 1 -> 3, 3, 2: 3 and 5 tie, 3 is lower
    assert background_codeword(indices, body) == 3
    body[1, 0, 0] = True
    assert background_codeword(indices, body) == 5


def test_background_codeword_bad_arguments():
    indices = torch.randint(0, 4, (2, 3, 3))
    with pytest.raises(ValueError, match="at least one latent position outside the body"):
        background_codeword(indices, torch.ones(2, 3, 3, dtype=torch.bool))
    with pytest.raises(TypeError, match="body_mask must be a bool tensor"):
        background_codeword(indices, torch.ones(2, 3, 3))
    with pytest.raises(ValueError, match="body_mask must have the shape of indices"):
        background_codeword(indices, torch.zeros(2, 4, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"indices must be in \[0, 3\)"):
        background_codeword(indices + 3, torch.zeros(2, 3, 3, dtype=torch.bool), num_codewords=3)


def _small_model(dtype):
    torch.manual_seed(1)
    model = VQEncoderDecoder(in_channels=2, num_classes=3, latent_dim=6, num_codewords=20, widths=(4, 8)).to(dtype)
    for module in model.modules():  # non-trivial BatchNorm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_latent_feature_ablation_matches_the_loop_reference(dtype):
    model = _small_model(dtype)
    # codewords 0..11 spread over 5 images of 4 x 3 latent positions: most images lack some
    indices = torch.randint(0, 12, (5, 4, 3), generator=torch.Generator().manual_seed(2))
    codebook = model.quantizer.codebook.detach()
    present = indices.unique().tolist()
    absent = sorted(set(range(20)) - set(present))
    background = present[0]
    codewords = present[1:] + absent[:2] + [background, present[1]]  # absent, the background, a repeat
    got = latent_feature_ablation(model.decode, indices, codebook, codewords, background, batch_size=3)
    expected = latent_feature_ablation_reference(model.decode, indices, codebook, codewords, background)
    assert got.shape == (len(codewords), 5, 16, 12) and got.dtype == dtype
    rtol, atol = TOLERANCES[dtype]
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol)
    n_present = len(present) - 1
    assert (got[n_present:n_present + 3] == 0).all()  # absent codewords and the background itself
    for j, c in enumerate(codewords[:n_present]):
        for b in range(5):  # a present codeword changes the decoded map; an absent one does not
            assert bool((got[j, b] > 0).any()) == bool((indices[b] == c).any())
    torch.testing.assert_close(got[-1], got[0])
    with torch.no_grad():
        logits = model.decode_indices(indices)
    given = latent_feature_ablation(model.decode, indices, codebook, codewords, background, logits=logits)
    torch.testing.assert_close(given, got, rtol=rtol, atol=atol)


def test_latent_feature_ablation_by_hand():
    # decoder = identity on a 1-channel codebook: the map is |e_b - e_c| where the codeword was c
    codebook = torch.tensor([[0.0], [1.0], [3.0]])
    indices = torch.tensor([[[1, 2], [0, 1]]])
    got = latent_feature_ablation(lambda z: z, indices, codebook, [1, 2], background=0)
    assert got.tolist() == [[[[1.0, 0.0], [0.0, 1.0]]], [[[0.0, 3.0], [0.0, 0.0]]]]
    assert latent_feature_ablation(lambda z: z, indices, codebook, [], background=0).shape == (0, 1, 2, 2)


def test_latent_feature_ablation_bad_arguments():
    codebook = torch.randn(6, 3)
    indices = torch.randint(0, 6, (2, 4, 4))
    decoder = torch.nn.Identity()
    with pytest.raises(ValueError, match=r"codewords must be in \[0, 6\) \(codebook size K\), got min 1 and max 6"):
        latent_feature_ablation(decoder, indices, codebook, [1, 6], 0)
    with pytest.raises(ValueError, match="codewords must be in"):
        latent_feature_ablation(decoder, indices, codebook, [-1], 0)
    with pytest.raises(ValueError, match=r"background must be an int in \[0, 6\)"):
        latent_feature_ablation(decoder, indices, codebook, [1], 6)
    with pytest.raises(ValueError, match=r"indices must be in \[0, 6\)"):
        latent_feature_ablation(decoder, indices + 3, codebook, [1], 0)
    with pytest.raises(ValueError, match="codewords must be a 1-D sequence of integer"):
        latent_feature_ablation(decoder, indices, codebook, [0.5], 0)
    with pytest.raises(ValueError, match=r"codebook must have shape \(K, D\)"):
        latent_feature_ablation(decoder, indices, codebook[None], [1], 0)
    with pytest.raises(TypeError, match="indices must have an integer dtype"):
        latent_feature_ablation(decoder, indices.float(), codebook, [1], 0)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        latent_feature_ablation(decoder, indices, codebook, [1], 0, batch_size=0)
    with pytest.raises(ValueError, match=r"logits must be the decoder output \(B=2"):
        latent_feature_ablation(decoder, indices, codebook, [1], 0, logits=torch.zeros(3, 3, 4, 4))
