"""Models for the CLI misuse tests (loaded through --factory)."""
import torch
from torch import nn

from mmxai_fast.models import VGG3D


class CountingVGG3D(VGG3D):
    """VGG3D counting its forward calls in the class attribute ``calls``."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x)


class TupleModel(nn.Module):
    """Returns a tuple (a Captum-incompatible output)."""

    def __init__(self, **kwargs):
        super().__init__()
        self.conv = nn.Conv3d(2, 2, 1)

    def forward(self, x):
        return self.conv(x).mean((2, 3, 4)), x


class SegmentationModel(TupleModel):
    """Returns a voxel map ``[1, C, X, Y, Z]``, not ``[1, classes]``."""

    def forward(self, x):
        return self.conv(x)


class NaNModel(TupleModel):
    def forward(self, x):
        return self.conv(x).mean((2, 3, 4)) * float("nan")
