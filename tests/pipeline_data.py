"""Small synthetic NIfTI cases for the pipeline tests."""
import os

import nibabel as nib
import numpy as np
import torch

ANATOMICAL = os.path.join(os.path.dirname(nib.__file__), "tests", "data", "anatomical.nii")
AFFINE = np.array([[-1.5, 0, 0, 30.0], [0, 1.5, 0, -40.0], [0, 0, 2.0, -10.0], [0, 0, 0, 1]])
SHAPE = (12, 10, 8)


def ball(shape=SHAPE, radius=0.4, centre=None):
    """Bool ball of ``radius`` (fraction of the smallest edge)."""
    centre = centre if centre is not None else [(s - 1) / 2 for s in shape]
    grid = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(grid, centre)))
    return dist <= radius * min(shape)


def volumes(names=("t1", "t2"), shape=SHAPE, seed=0):
    """``{name: float32 array}``: a bright textured ball on an exactly-zero background."""
    rng = np.random.default_rng(seed)
    inside = ball(shape)
    out = {}
    for i, name in enumerate(names):
        v = (100 + 50 * i + 20 * rng.standard_normal(shape)).astype(np.float32)
        out[name] = np.where(inside, v, 0).astype(np.float32)
    return out


def save(path, data, affine=AFFINE):
    nib.save(nib.Nifti1Image(np.asarray(data), affine), str(path))
    return str(path)


def write_case(tmp_path, names=("t1", "t2"), shape=SHAPE, with_roi=True):
    """Files of a small case: ``({name: path}, roi_path or None)``."""
    paths = {name: save(tmp_path / f"{name}.nii.gz", v) for name, v in volumes(names, shape).items()}
    roi = None
    if with_roi:
        mask = ball(shape, radius=0.15, centre=[shape[0] / 2, shape[1] / 2, shape[2] - 3])
        roi = save(tmp_path / "roi.nii.gz", mask.astype(np.uint8))
    return paths, roi


def small_model(in_channels=2, num_classes=2, seed=0):
    from mmxai_fast.models import VGG3D

    torch.manual_seed(seed)
    return VGG3D(in_channels=in_channels, num_classes=num_classes, widths=(4, 8), hidden=8).eval()


class ExplodingVGG3D(__import__("mmxai_fast.models", fromlist=["VGG3D"]).VGG3D):
    """VGG3D whose forward fails from its ``fail_at``-th call on (a failure in the middle of a run)."""

    fail_at = 3

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.calls >= self.fail_at:
            raise RuntimeError("model failed mid-run")
        return super().forward(x)
