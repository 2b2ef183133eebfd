"""Bad values of the public pipeline classes are refused at construction, naming the argument."""
import numpy as np
import pytest
import torch

from mmxai_fast.pipeline import Baseline, Case, CaseError, Superpixels, load_case, superpixel_mask
from mmxai_fast.pipeline.models_io import ModelLoadError, resolve_factory
from pipeline_data import AFFINE, save

SHAPE = (6, 5, 4)


def _case(**kw):
    return Case(**{"image": torch.rand(2, *SHAPE), "modalities": ("a", "b"), "affine": AFFINE, **kw})


SINGULAR = np.eye(4)
SINGULAR[:2, :2] = 1.0


@pytest.mark.parametrize("kw, message", [
    ({"image": torch.full((2, *SHAPE), float("nan"))}, "Case.image must be finite"),
    ({"image": torch.full((2, *SHAPE), float("inf"))}, "Case.image must be finite"),
    ({"image": torch.full((2, *SHAPE), 1e300, dtype=torch.float64)}, "Case.image must be finite"),
    ({"image": torch.rand(2, 4, 0, 4)}, "Case.image must have no empty dim"),
    ({"image": torch.rand(0, *SHAPE), "modalities": ()}, "Case.image must have no empty dim"),
    ({"image": torch.rand(2, *SHAPE, dtype=torch.complex64)}, "Case.image must have a real dtype"),
    ({"affine": np.where(np.eye(4) > 0, np.nan, 0)}, "Case.affine must be finite"),
    ({"affine": np.diag([1.0, 0.0, 1.0, 1.0])}, "Case.affine must be invertible"),
    ({"affine": SINGULAR}, "Case.affine must be invertible"),
])
def test_case_refuses_bad_values(kw, message):
    with pytest.raises(CaseError, match=message):
        _case(**kw)


def test_load_case_refuses_empty_and_singular_files(tmp_path):
    empty = save(tmp_path / "empty.nii.gz", np.zeros((4, 0, 4), np.float32))
    with pytest.raises(CaseError, match="modality 't1': .* (has an empty dim|not a readable)"):
        load_case({"t1": empty})
    singular = save(tmp_path / "sing.nii.gz", np.ones(SHAPE, np.float32), affine=SINGULAR)
    with pytest.raises(CaseError, match="modality 't1': the affine of .* must be invertible"):
        load_case({"t1": singular})


@pytest.mark.parametrize("kw, message", [
    ({"compactness": float("inf")}, "compactness must be a finite number > 0"),
    ({"compactness": float("nan")}, "compactness must be a finite number > 0"),
    ({"compactness": True}, "compactness must be"),
    ({"max_num_iter": 0}, "max_num_iter must be an int >= 1"),
    ({"spacing": (float("nan"), 1, 1)}, "spacing must be None or finite numbers > 0"),
    ({"spacing": (0, 1, 1)}, "spacing must be None or finite numbers > 0"),
])
def test_superpixels_refuse_bad_values(kw, message):
    with pytest.raises(ValueError, match=message):
        Superpixels(**kw)


def test_more_segments_than_voxels_are_capped_at_the_voxels():
    case = _case()
    for backend in ("mmxai", "skimage"):
        mask = superpixel_mask(case, Superpixels(n_segments=2**31 - 1, backend=backend))
        capped = superpixel_mask(case, Superpixels(n_segments=120, backend=backend))
        assert torch.equal(mask, capped) and 1 <= int(mask.max()) <= 2 * 120


def test_baseline_seed_range():
    for seed in (-1, 2**63, 1.5, True):
        with pytest.raises(ValueError, match="Baseline seed must be an int in"):
            Baseline.gaussian(seed=seed)
    assert Baseline.gaussian(seed=2**63 - 1).tensor(_case()).isfinite().all()


def test_model_load_errors_carry_the_argument():
    with pytest.raises(ModelLoadError) as info:
        resolve_factory("no_colon")
    assert info.value.argument == "factory"
