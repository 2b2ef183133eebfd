import numpy as np
import pytest
import torch

from mmxai_fast.ops import HU_WINDOW_PRESETS, HUWindow, hu_window
from mmxai_fast.pipeline import Case, CaseError, derive_foreground, load_case, load_ct_case
from pipeline_data import AFFINE, ANATOMICAL, SHAPE, ball, save, volumes, write_case


def test_load_modalities_keeps_order_values_affine_and_sources(tmp_path):
    paths, roi = write_case(tmp_path)
    case = load_case(paths, roi=roi)
    vols = volumes()
    assert case.modalities == ("t1", "t2")
    assert case.image.dtype == torch.float32 and tuple(case.image.shape) == (2,) + SHAPE
    np.testing.assert_array_equal(case.image[1].numpy(), vols["t2"])
    np.testing.assert_allclose(case.affine, AFFINE)
    assert case.sources == (paths["t1"], paths["t2"])
    assert case.roi.dtype == torch.bool and case.roi.any()
    # Zero background: the derived foreground is exactly the ball.
    np.testing.assert_array_equal(case.foreground.numpy(), ball())
    assert case.spacing == pytest.approx((1.5, 1.5, 2.0))


def test_load_4d_file_and_names(tmp_path):
    vols = volumes(("a", "b", "c"))
    path = save(tmp_path / "four.nii.gz", np.stack(list(vols.values()), axis=-1))
    case = load_case(path, names=["t1", "t2", "flair"])
    assert case.modalities == ("t1", "t2", "flair")
    np.testing.assert_array_equal(case.image[2].numpy(), vols["c"])
    assert load_case(path).modalities == ("channel0", "channel1", "channel2")


def test_single_frame_4d_file_reads_as_3d(tmp_path):
    path = save(tmp_path / "one.nii.gz", volumes(("t1",))["t1"][..., None])
    assert tuple(load_case({"t1": path}).image.shape) == (1,) + SHAPE


def test_2d_case(tmp_path):
    img = volumes(("t1",), shape=(16, 12))["t1"]
    case = load_case({"t1": save(tmp_path / "t1.nii.gz", img)})
    assert tuple(case.image.shape) == (1, 16, 12) and case.spacing == pytest.approx((1.5, 1.5))


@pytest.mark.parametrize("normalize", [None, "zscore"])
def test_explicit_foreground_and_zscore(tmp_path, normalize):
    paths, _ = write_case(tmp_path, with_roi=False)
    fg = ball(radius=0.3)
    fg_path = save(tmp_path / "fg.nii.gz", fg.astype(np.float32))
    case = load_case(paths, foreground=fg_path, normalize=normalize)
    np.testing.assert_array_equal(case.foreground.numpy(), fg)
    if normalize:
        for m in range(2):
            inside = case.image[m][case.foreground].double()
            assert float(inside.mean()) == pytest.approx(0, abs=1e-5)
            assert float(inside.std(unbiased=False)) == pytest.approx(1, abs=1e-5)
            assert bool((case.image[m][~case.foreground] == 0).all())


def test_masks_as_arrays(tmp_path):
    paths, _ = write_case(tmp_path)
    roi = np.zeros(SHAPE, bool)
    roi[5, 5, 5] = True
    case = load_case(paths, roi=roi, foreground=torch.from_numpy(ball(radius=0.3)))
    assert bool(case.roi[5, 5, 5]) and int(case.roi.sum()) == 1
    np.testing.assert_array_equal(case.foreground.numpy(), ball(radius=0.3))
    with pytest.raises(CaseError, match=r"roi: the mask's shape \(2, 2\) differs"):
        load_case(paths, roi=np.ones((2, 2)))
    with pytest.raises(CaseError, match="foreground: the mask given is empty"):
        load_case(paths, foreground=np.zeros(SHAPE))


def test_derived_foreground_on_noisy_background():
    rng = np.random.default_rng(0)
    inside = ball((20, 20, 20), radius=0.35)
    img = np.where(inside, 1000 + 50 * rng.standard_normal(inside.shape), 20 * rng.standard_normal(inside.shape))
    inside_hollow = inside.copy()
    img[10, 10, 10] = 0  # a dark voxel inside the brain (ventricle) is a filled hole
    fg = derive_foreground(torch.from_numpy(img[None]).float()).numpy()
    # Noise above the threshold touching the ball may stay; isolated speckles may not.
    assert fg[inside_hollow].all()
    assert (fg & ~inside_hollow).mean() < 0.01
    far = ~ball((20, 20, 20), radius=0.45)
    assert not (fg & far).any()


def test_real_t1_foreground_is_not_empty():
    case = load_case({"t1": ANATOMICAL})
    assert tuple(case.image.shape) == (1, 33, 41, 25)
    assert 0.5 < float(case.foreground.float().mean()) <= 1.0


def test_ct_case_windows(tmp_path):
    hu = np.full(SHAPE, -1000.0, dtype=np.float32)
    hu[ball()] = 40.0
    hu[ball(radius=0.15)] = 900.0
    path = save(tmp_path / "ct.nii.gz", hu.astype(np.int16))
    case = load_ct_case(path, windows=("brain", HUWindow(600, 2800), (0.0, 200.0)))
    assert case.modalities == ("brain", "temporal_bone", "L0W200")
    expected = hu_window(torch.from_numpy(hu), [HU_WINDOW_PRESETS["brain"], HUWindow(600, 2800), (0.0, 200.0)])
    torch.testing.assert_close(case.image, expected)
    np.testing.assert_array_equal(case.foreground.numpy(), ball())
    assert load_ct_case(path).modalities == ("brain", "subdural", "bone")


# ---------------------------------------------------------------- every loader error

def test_error_missing_file(tmp_path):
    paths, _ = write_case(tmp_path)
    with pytest.raises(CaseError, match=r"modality 't2': file .*nope.nii.gz' does not exist"):
        load_case({"t1": paths["t1"], "t2": str(tmp_path / "nope.nii.gz")})


def test_error_unreadable_file(tmp_path):
    bad = tmp_path / "bad.nii.gz"
    bad.write_bytes(b"not a nifti at all")
    with pytest.raises(CaseError, match=r"modality 't1': .*bad.nii.gz' is not a readable NIfTI"):
        load_case({"t1": str(bad)})


def test_error_shape_mismatch_names_both_files(tmp_path):
    paths, _ = write_case(tmp_path)
    other = save(tmp_path / "small.nii.gz", np.ones((12, 10, 7), np.float32))
    with pytest.raises(CaseError, match=r"small.nii.gz' has shape \(12, 10, 7\) but .*t1.nii.gz' has \(12, 10, 8\)"):
        load_case({"t1": paths["t1"], "t2": other})


def test_error_affine_mismatch_names_both_files(tmp_path):
    paths, _ = write_case(tmp_path)
    moved = AFFINE.copy()
    moved[0, 3] += 1.0
    other = save(tmp_path / "moved.nii.gz", volumes()["t2"], affine=moved)
    with pytest.raises(CaseError, match=r"moved.nii.gz' has a different affine than .*t1.nii.gz'"):
        load_case({"t1": paths["t1"], "t2": other})


def test_tiny_affine_difference_is_the_same_grid(tmp_path):
    paths, _ = write_case(tmp_path)
    nudged = AFFINE.copy()
    nudged[0, 3] += 1e-6
    load_case({"t1": paths["t1"], "t2": save(tmp_path / "n.nii.gz", volumes()["t2"], affine=nudged)})


@pytest.mark.parametrize("kind", ["roi", "foreground"])
def test_error_mask_mismatch(tmp_path, kind):
    paths, _ = write_case(tmp_path, with_roi=False)
    mask = save(tmp_path / "mask.nii.gz", np.ones((12, 10, 9), np.uint8))
    with pytest.raises(CaseError, match=rf"{kind}: .*mask.nii.gz' has shape"):
        load_case(paths, **{kind: mask})


def test_error_empty_foreground(tmp_path):
    paths, _ = write_case(tmp_path)
    empty = save(tmp_path / "empty.nii.gz", np.zeros(SHAPE, np.uint8))
    with pytest.raises(CaseError, match="foreground: the mask from .*empty.nii.gz' is empty"):
        load_case(paths, foreground=empty)
    zero = save(tmp_path / "zero.nii.gz", np.zeros(SHAPE, np.float32))
    with pytest.raises(CaseError, match="derived from the intensities is empty"):
        load_case({"t1": zero})


def test_error_non_finite(tmp_path):
    v = volumes(("t1",))["t1"]
    v[0, 0, 0] = np.nan
    with pytest.raises(CaseError, match="NaN or infinite"):
        load_case({"t1": save(tmp_path / "nan.nii.gz", v)})


def test_error_4d_as_modality_and_3d_as_image(tmp_path):
    four = save(tmp_path / "four.nii.gz", np.ones(SHAPE + (2,), np.float32))
    with pytest.raises(CaseError, match="must be a 2D or 3D volume"):
        load_case({"t1": four})
    paths, _ = write_case(tmp_path)
    with pytest.raises(CaseError, match=r"image: .* must be 4D"):
        load_case(paths["t1"])


def test_error_names(tmp_path):
    four = save(tmp_path / "four.nii.gz", np.ones(SHAPE + (2,), np.float32))
    with pytest.raises(CaseError, match="holds 2 modalities, got 3 names"):
        load_case(four, names=["a", "b", "c"])
    paths, _ = write_case(tmp_path)
    with pytest.raises(CaseError, match="names: only for a single 4D file"):
        load_case(paths, names=["a", "b"])


def test_error_no_modality_and_bad_normalize(tmp_path):
    with pytest.raises(CaseError, match="at least one"):
        load_case({})
    paths, _ = write_case(tmp_path)
    with pytest.raises(CaseError, match="normalize must be one of"):
        load_case(paths, normalize="minmax")


def test_error_zscore_constant_modality(tmp_path):
    paths, _ = write_case(tmp_path)
    flat = save(tmp_path / "flat.nii.gz", np.where(ball(), 5.0, 0.0).astype(np.float32))
    with pytest.raises(CaseError, match="modality 'flat' is constant"):
        load_case({"t1": paths["t1"], "flat": flat}, normalize="zscore")


def test_case_validation():
    with pytest.raises(CaseError, match="must name the 2 modalities"):
        Case(torch.zeros(2, 3, 3, 3), ("a",), np.eye(4))
    with pytest.raises(CaseError, match="unique"):
        Case(torch.zeros(2, 3, 3, 3), ("a", "a"), np.eye(4))
    with pytest.raises(CaseError, match=r"\(4, 4\)"):
        Case(torch.zeros(1, 3, 3, 3), ("a",), np.eye(3))
    with pytest.raises(CaseError, match="roi must have the image's spatial shape"):
        Case(torch.zeros(1, 3, 3, 3), ("a",), np.eye(4), roi=torch.zeros(3, 3, 2, dtype=torch.bool))
