"""A small 2D VQ encoder-decoder for segmentation (the shape of Kobayashi et al. 2021), built in code.

``(N, 4, 256, 256)`` slices -> encoder -> ``z_e`` ``(N, 64, 8, 8)`` -> :class:`VectorQuantizer`
(512 x 64 codebook) -> decoder -> segmentation logits ``(N, num_classes, 256, 256)``. Each stage
halves (encoder) or doubles (decoder) the resolution; five stages give 256 / 32 = 8.
"""
from __future__ import annotations

from typing import List, NamedTuple, Optional, Sequence

from torch import Tensor, nn

from ..radiomics.quantizer import VectorQuantizer
from .._validation import positive_int

__all__ = ["VQEncoderDecoder", "VQOutput"]


class VQOutput(NamedTuple):
    """``logits`` ``(N, num_classes, H, W)``, codeword ``indices`` ``(N, H/f, W/f)`` and the
    quantizer's ``loss`` (scalar)."""

    logits: Tensor
    indices: Tensor
    loss: Tensor


def _conv_bn_relu(in_ch: int, out_ch: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


def _up_bn_relu(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(in_ch, out_ch, 4, stride=2, padding=1, bias=False),
                         nn.BatchNorm2d(out_ch), nn.ReLU(inplace=True))


class VQEncoderDecoder(nn.Module):
    """2D encoder -> vector quantizer -> decoder, segmentation logits at the input resolution.

    Args:
        in_channels: MRI sequences (4 for BraTS: T1, T1ce, T2, FLAIR).
        num_classes: segmentation classes (logit channels).
        latent_dim: ``D``, channels of ``z_e`` and size of each codeword (64).
        num_codewords: ``K`` (512).
        widths: channels of the encoder stages (each a stride-2 conv); the decoder mirrors them.
            Five stages (the default) map 256 x 256 to 8 x 8.
        beta, ema_decay: passed to :class:`VectorQuantizer`.

    Shape: ``(N, in_channels, H, W)`` with ``H, W`` multiples of ``2 ** len(widths)`` ->
    :class:`VQOutput`.
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 4, latent_dim: int = 64, num_codewords: int = 512,
                 widths: Sequence[int] = (16, 32, 64, 64, 128), beta: float = 0.25,
                 ema_decay: Optional[float] = None) -> None:
        super().__init__()
        self.in_channels = positive_int(in_channels, "in_channels")
        positive_int(num_classes, "num_classes")
        widths = list(widths)
        if not widths:
            raise ValueError("widths must name at least one encoder stage, got an empty sequence")
        self.downsampling = 2 ** len(widths)
        layers: List[nn.Module] = []
        ch = in_channels
        for width in widths:
            layers.append(_conv_bn_relu(ch, width, stride=2))
            ch = width
        layers.append(nn.Conv2d(ch, latent_dim, 1))
        self.encoder = nn.Sequential(*layers)
        self.quantizer = VectorQuantizer(num_codewords, latent_dim, beta=beta, ema_decay=ema_decay)
        layers, ch = [_conv_bn_relu(latent_dim, widths[-1])], widths[-1]
        for width in reversed(widths[:-1]):
            layers.append(_up_bn_relu(ch, width))
            ch = width
        layers += [_up_bn_relu(ch, ch), nn.Conv2d(ch, num_classes, 1)]
        self.decoder = nn.Sequential(*layers)

    def _check_input(self, x: Tensor) -> None:
        if not isinstance(x, Tensor) or x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"x must have shape (N, C={self.in_channels}, H, W), got "
                             f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if x.shape[2] % self.downsampling or x.shape[3] % self.downsampling:
            raise ValueError(f"x height and width must be multiples of {self.downsampling}, got shape {tuple(x.shape)}")

    def encode(self, x: Tensor) -> Tensor:
        """``z_e`` ``(N, D, H/f, W/f)`` before quantisation."""
        self._check_input(x)
        return self.encoder(x)

    def encode_indices(self, x: Tensor) -> Tensor:
        """Codeword indices ``(N, H/f, W/f)`` of ``x`` (no loss, no EMA update)."""
        return self.quantizer.quantize(self.encode(x))

    def decode(self, z_q: Tensor) -> Tensor:
        """Logits ``(N, num_classes, H, W)`` from quantised latents ``(N, D, H/f, W/f)``."""
        return self.decoder(z_q)

    def decode_indices(self, indices: Tensor) -> Tensor:
        """Logits from codeword indices ``(N, H/f, W/f)``."""
        return self.decoder(self.quantizer.lookup(indices))

    def forward(self, x: Tensor) -> VQOutput:
        z_q, indices, loss = self.quantizer(self.encode(x))
        return VQOutput(self.decoder(z_q), indices, loss)
