import sys
import types

import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Case, Superpixels, load_case, superpixel_mask
from pipeline_data import ANATOMICAL, ball, write_case


def _case(tmp_path, names=("t1", "t2", "flair")):
    paths, roi = write_case(tmp_path, names=names, shape=(16, 14, 12))
    return load_case(paths, roi=roi)


def test_per_modality_labels_are_unique_and_background_excluded(tmp_path):
    case = _case(tmp_path)
    mask = superpixel_mask(case, Superpixels(n_segments=12))
    assert mask.dtype == torch.int64 and mask.shape == case.image.shape
    fg = case.foreground
    assert bool((mask[:, ~fg] == 0).all()), "background voxels must carry id 0"
    assert bool((mask[:, fg] > 0).all()), "every foreground voxel belongs to a superpixel"
    ids = [set(torch.unique(mask[m][fg]).tolist()) for m in range(3)]
    for a in range(3):
        for b in range(a + 1, 3):
            assert not ids[a] & ids[b], f"modalities {a} and {b} share superpixel ids"
    every = sorted(set().union(*ids))
    assert every == list(range(1, len(every) + 1)), "ids are 1..F without gaps"
    assert all(len(s) >= 2 for s in ids)


def test_each_modality_is_segmented_on_its_own_intensities(tmp_path):
    case = _case(tmp_path, names=("t1", "t2"))
    # Modality 1 gets a sharp split at x = 8 that modality 0 lacks: only its segments follow it.
    image = case.image.clone()
    image[1][:8] = 0.0 + case.foreground[:8] * 10
    image[1][8:] = 0.0 + case.foreground[8:] * 1000
    case = Case(image, case.modalities, case.affine, case.foreground)
    mask = superpixel_mask(case, Superpixels(n_segments=6, compactness=0.01))
    left = set(torch.unique(mask[1][:8][case.foreground[:8]]).tolist())
    right = set(torch.unique(mask[1][8:][case.foreground[8:]]).tolist())
    assert not left & right


def test_joint_mask_is_shared(tmp_path):
    case = _case(tmp_path)
    mask = superpixel_mask(case, Superpixels(n_segments=10, joint=True))
    assert bool((mask == mask[0]).all())
    assert bool((mask[0][~case.foreground] == 0).all()) and bool((mask[0][case.foreground] > 0).all())


def test_2d_case(tmp_path):
    fg = torch.from_numpy(ball((20, 16)))
    image = torch.randn(2, 20, 16) * fg
    case = Case(image, ("a", "b"), np.eye(4), foreground=fg)
    mask = superpixel_mask(case, Superpixels(n_segments=5))
    assert mask.shape == (2, 20, 16) and bool((mask[:, ~fg] == 0).all())
    assert not set(torch.unique(mask[0][fg]).tolist()) & set(torch.unique(mask[1][fg]).tolist())


def test_no_foreground_means_no_background_id():
    case = Case(torch.randn(2, 8, 8, 6), ("a", "b"), np.eye(4))
    mask = superpixel_mask(case, Superpixels(n_segments=4))
    assert int(mask.min()) == 1


def test_real_t1_segment_count():
    case = load_case({"t1": ANATOMICAL})
    mask = superpixel_mask(case, Superpixels(n_segments=50))
    count = len(torch.unique(mask[mask > 0]))
    assert 25 <= count <= 100


def test_mmxai_backend_calls_ops_slic(monkeypatch, tmp_path):
    import mmxai_fast.ops as ops

    calls = []

    def fake_slic(image, **kwargs):
        calls.append(kwargs)
        return np.where(kwargs["mask"], 1 + (np.indices(image.shape)[0] >= image.shape[0] // 2), 0)

    monkeypatch.setattr(ops, "slic", fake_slic, raising=False)
    case = _case(tmp_path, names=("t1", "t2"))
    mask = superpixel_mask(case, Superpixels(n_segments=7, backend="mmxai"))
    assert len(calls) == 2 and calls[0]["n_segments"] == 7 and calls[0]["start_label"] == 1
    assert sorted(torch.unique(mask).tolist()) == [0, 1, 2, 3, 4]


def test_mmxai_backend_missing(monkeypatch, tmp_path):
    import mmxai_fast.ops as ops

    monkeypatch.delattr(ops, "slic", raising=False)
    with pytest.raises(ValueError, match="needs mmxai_fast.ops.slic"):
        superpixel_mask(_case(tmp_path), Superpixels(backend="mmxai"))


def test_config_validation(tmp_path):
    with pytest.raises(ValueError, match="n_segments"):
        Superpixels(n_segments=0)
    with pytest.raises(ValueError, match="compactness"):
        Superpixels(compactness=0)
    with pytest.raises(ValueError, match="backend"):
        Superpixels(backend="opencv")
    with pytest.raises(ValueError, match="spacing must give 3 values"):
        superpixel_mask(_case(tmp_path), Superpixels(spacing=(1.0, 1.0)))
