import pytest
import torch

from mmxai_fast.models import VQEncoderDecoder, VQOutput
from mmxai_fast.radiomics import (background_codeword, intensity_robustness, latent_feature_ablation,
                                  latent_feature_ablation_reference, volume_codeword_histograms)


def _tiny(**kwargs):
    torch.manual_seed(0)
    return VQEncoderDecoder(in_channels=2, num_classes=3, latent_dim=8, num_codewords=16, widths=(4, 8), **kwargs)


def test_paper_shapes():
    model = VQEncoderDecoder().eval()  # 4 x 256 x 256 -> 64 x 8 x 8, 512 x 64 codebook
    assert tuple(model.quantizer.codebook.shape) == (512, 64)
    x = torch.randn(1, 4, 256, 256)
    with torch.no_grad():
        z_e = model.encode(x)
        out = model(x)
    assert z_e.shape == (1, 64, 8, 8)
    assert isinstance(out, VQOutput)
    assert out.logits.shape == (1, 4, 256, 256)
    assert out.indices.shape == (1, 8, 8) and out.indices.dtype == torch.int64
    assert out.loss.dim() == 0


def test_decode_indices_reproduces_forward_in_eval_mode():
    model = _tiny().eval()
    x = torch.randn(3, 2, 16, 20)
    with torch.no_grad():
        out = model(x)
        indices = model.encode_indices(x)
        assert torch.equal(indices, out.indices)
        torch.testing.assert_close(model.decode_indices(indices), out.logits)


def test_gradients_reach_encoder_decoder_and_codebook():
    model = _tiny().train()
    x = torch.randn(2, 2, 8, 8)
    out = model(x)
    (out.logits.square().mean() + out.loss).backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name  # encoder via straight-through, codebook via the loss
    assert model.encoder[0][0].weight.grad.abs().sum() > 0
    assert model.quantizer.codebook.grad.abs().sum() > 0


def test_ema_mode_updates_codebook_in_training():
    model = _tiny(ema_decay=0.9).train()
    before = model.quantizer.codebook.detach().clone()
    model(torch.randn(2, 2, 8, 8)).loss.backward()
    assert model.quantizer.codebook.grad is None
    assert not torch.equal(model.quantizer.codebook.detach(), before)


def test_compiles_fullgraph():
    torch._dynamo.reset()
    model = _tiny().eval()
    x = torch.randn(2, 2, 16, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        got, expected = compiled(x), model(x)
    assert torch.equal(got.indices, expected.indices)
    torch.testing.assert_close(got.logits, expected.logits)


def test_bad_input_shapes():
    model = _tiny()
    with pytest.raises(ValueError, match=r"x must have shape \(N, C=2, H, W\), got \(1, 3, 8, 8\)"):
        model(torch.randn(1, 3, 8, 8))
    with pytest.raises(ValueError, match="x height and width must be multiples of 4"):
        model(torch.randn(1, 2, 8, 6))
    with pytest.raises(ValueError, match="widths must name at least one encoder stage"):
        VQEncoderDecoder(widths=())


def test_radiomics_pipeline_on_the_model():
    """Histograms, robustness and ablation run end to end on the model's own encode/decode."""
    model = _tiny().eval()
    with torch.no_grad():  # spread z_e over the codebook so that several codewords occur
        model.quantizer.codebook.mul_(0.05)
    volumes = torch.randn(2, 3, 2, 16, 16)
    result = intensity_robustness(model.encode_indices, volumes, 16, strengths=[0.0, 0.5], batch_size=4)
    with torch.no_grad():
        indices = model.encode_indices(volumes.view(6, 2, 16, 16))
    assert torch.equal(result.original, volume_codeword_histograms(indices.view(2, 3, 4, 4), 16))
    assert result.scale[:, 0].tolist() == [0.0, 0.0]
    body = torch.zeros(6, 16, 16, dtype=torch.bool)
    body[:, 4:12, 4:12] = True
    background = background_codeword(indices, body, 16)
    codewords = indices.unique().tolist()
    assert len(codewords) > 1
    got = latent_feature_ablation(model.decode, indices, model.quantizer.codebook.detach(), codewords, background,
                                  batch_size=5)
    expected = latent_feature_ablation_reference(model.decode, indices, model.quantizer.codebook.detach(),
                                                 codewords, background)
    assert got.shape == (len(codewords), 6, 16, 16)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
