"""3D CNN classifiers for multi-modal volumes ``[N, C, D, H, W]`` (C = modalities)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

__all__ = ["VGG3D", "DenseNet3D", "last_conv_layer"]


def _conv_block(in_ch: int, out_ch: int, convs: int) -> nn.Sequential:
    layers = []
    for i in range(convs):
        layers += [nn.Conv3d(in_ch if i == 0 else out_ch, out_ch, 3, padding=1, bias=False),
                   nn.BatchNorm3d(out_ch), nn.ReLU(inplace=True)]
    layers.append(nn.MaxPool3d(2, ceil_mode=True))
    return nn.Sequential(*layers)


class VGG3D(nn.Module):
    """VGG-like 3D classifier (Jin et al. 2023): ``len(widths)`` conv blocks (each ``convs_per_block``
    3x3x3 conv + BN + ReLU, then 2x max-pool), global average pooling and an MLP head.

    Args:
        in_channels: modalities ``C``.
        num_classes: output logits.
        widths: channels of each block.
        convs_per_block: convolutions per block.
        hidden: width of the MLP head's hidden layer.
        pool: global pooling before the head, ``"avg"`` or ``"max"`` (max pooling suits evidence
            confined to a small region, such as a tumour rim).

    Shape: ``[N, C, D, H, W]`` -> ``[N, num_classes]`` (any spatial size >= 1: pooling rounds up,
    so odd sizes work).
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 2, widths: Sequence[int] = (16, 32, 64, 128),
                 convs_per_block: int = 1, hidden: int = 64, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("avg", "max"):
            raise ValueError(f"pool must be 'avg' or 'max', got {pool!r}")
        blocks, ch = [], in_channels
        for width in widths:
            blocks.append(_conv_block(ch, width, convs_per_block))
            ch = width
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool3d(1) if pool == "avg" else nn.AdaptiveMaxPool3d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(ch, hidden), nn.ReLU(inplace=True),
                                        nn.Linear(hidden, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.pool(self.features(x)))


class _DenseLayer(nn.Module):
    def __init__(self, in_ch: int, growth: int, bottleneck: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm3d(in_ch), nn.ReLU(inplace=True), nn.Conv3d(in_ch, bottleneck * growth, 1, bias=False),
            nn.BatchNorm3d(bottleneck * growth), nn.ReLU(inplace=True),
            nn.Conv3d(bottleneck * growth, growth, 3, padding=1, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([x, self.body(x)], 1)


class DenseNet3D(nn.Module):
    """Small 3D DenseNet-BC (Dasanayaka et al. used DenseNet-BC-169 via M3d-CAM).

    Args:
        in_channels: modalities ``C``.
        num_classes: output logits.
        block_layers: dense layers per block.
        growth: growth rate ``k``.
        init_features: channels of the stem convolution.

    Shape: ``[N, C, D, H, W]`` -> ``[N, num_classes]``. Each block's output is reachable as
    ``features.block<i>`` (a Grad-CAM layer earlier than the last, as the paper needed).
    """

    def __init__(self, in_channels: int = 4, num_classes: int = 3, block_layers: Sequence[int] = (2, 4, 4),
                 growth: int = 8, init_features: int = 16) -> None:
        super().__init__()
        features = nn.Sequential()
        features.add_module("stem", nn.Conv3d(in_channels, init_features, 3, padding=1, bias=False))
        ch = init_features
        for i, layers in enumerate(block_layers):
            block = nn.Sequential(*[_DenseLayer(ch + j * growth, growth) for j in range(layers)])
            features.add_module(f"block{i}", block)
            ch += layers * growth
            if i != len(block_layers) - 1:  # BC compression: halve the channels, then pool
                features.add_module(f"transition{i}", nn.Sequential(
                    nn.BatchNorm3d(ch), nn.ReLU(inplace=True), nn.Conv3d(ch, ch // 2, 1, bias=False),
                    nn.AvgPool3d(2)))
                ch //= 2
        features.add_module("norm", nn.BatchNorm3d(ch))
        features.add_module("relu", nn.ReLU(inplace=True))
        self.features = features
        self.classifier = nn.Sequential(nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(ch, num_classes))

    def forward(self, x: Tensor) -> Tensor:
        return self.classifier(self.features(x))


def last_conv_layer(model: nn.Module) -> nn.Module:
    """The last ``nn.Conv3d``/``nn.Conv2d`` registered in ``model`` (the paper's Grad-CAM layer:
    the topmost conv layer before the head).

    Raises:
        ValueError: the model has no convolution.
    """
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv3d, nn.Conv2d))]
    if not convs:
        raise ValueError(f"model {type(model).__name__} has no Conv2d/Conv3d layer for Grad-CAM")
    return convs[-1]
