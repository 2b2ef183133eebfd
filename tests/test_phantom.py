import importlib.util

import numpy as np
import pytest
import torch

from mmxai_fast.phantom import (GRADES, MODALITIES, TISSUES, make_brain_phantom, make_phantom_dataset,
                                mni152_anatomy)

HAVE_NILEARN = importlib.util.find_spec("nilearn") is not None
T1, T1CE, T2, FLAIR = (MODALITIES.index(m) for m in ("t1", "t1ce", "t2", "flair"))


def _mean(p, channel, tissue):
    mask = p.labels == TISSUES[tissue]
    assert mask.any(), f"no {tissue} voxel"
    return float(p.image[channel][mask].mean())


@pytest.mark.parametrize("shape", [(48, 48, 48), (33, 40, 28)])
def test_shapes_and_masks_are_consistent(shape):
    p = make_brain_phantom(shape, grade="high", seed=1)
    assert p.image.shape == (4, *shape) and p.image.dtype == torch.float32
    assert p.modalities == MODALITIES
    for mask in (p.brain, p.tumour, p.head, p.enhancing):
        assert mask.shape == shape and mask.dtype == torch.bool
    assert p.labels.dtype == torch.uint8 and int(p.labels.max()) <= max(TISSUES.values())
    assert bool(p.tumour.any())
    assert not (p.tumour & ~p.brain).any() and not (p.brain & ~p.head).any()
    torch.testing.assert_close(p.tumour, p.labels >= TISSUES["oedema"])
    torch.testing.assert_close(p.enhancing, p.labels == TISSUES["tumour_rim"])
    assert torch.isfinite(p.image).all() and (p.image >= 0).all()  # Rician magnitudes
    # The tumour is a small part of the head (a localisation test needs a small chance level).
    assert 0.003 < float(p.tumour.float().mean()) < 0.06


def test_no_tumour_and_low_grade():
    none = make_brain_phantom(grade=None, seed=2)
    assert not none.tumour.any() and not none.enhancing.any() and none.grade is None
    low = make_brain_phantom(grade="low", seed=2)
    assert low.tumour.any() and not low.enhancing.any()


@pytest.mark.parametrize("seed", [0, 5])
def test_contrasts_follow_the_sequences(seed):
    p = make_brain_phantom(grade="high", seed=seed)
    # T1: WM > GM > CSF; T2: CSF > GM > WM; FLAIR: CSF suppressed.
    assert _mean(p, T1, "white_matter") > _mean(p, T1, "grey_matter") > _mean(p, T1, "csf")
    assert _mean(p, T2, "csf") > _mean(p, T2, "grey_matter") > _mean(p, T2, "white_matter")
    assert _mean(p, FLAIR, "csf") < 0.5 * _mean(p, FLAIR, "white_matter")
    # Oedema bright in T2 and FLAIR, dark in T1.
    assert _mean(p, FLAIR, "oedema") > 1.4 * _mean(p, FLAIR, "white_matter")
    assert _mean(p, FLAIR, "oedema") > _mean(p, FLAIR, "grey_matter")
    assert _mean(p, T2, "oedema") > 1.4 * _mean(p, T2, "white_matter")
    assert _mean(p, T1, "oedema") < _mean(p, T1, "white_matter")
    # The enhancing rim is the brightest tissue of T1ce, and bright in T1ce only.
    rim = _mean(p, T1CE, "tumour_rim")
    assert rim > 1.3 * max(_mean(p, T1CE, t) for t in ("white_matter", "grey_matter", "scalp", "oedema"))
    assert rim > 2 * _mean(p, T1, "tumour_rim")


def test_grade_changes_only_the_rim_in_t1ce():
    high = make_brain_phantom(grade="high", seed=3)
    low = make_brain_phantom(grade="low", seed=3)
    torch.testing.assert_close(high.labels, low.labels)
    differ = (high.image != low.image)
    assert not differ[[T1, T2, FLAIR]].any()
    assert differ[T1CE].any()
    assert not (differ[T1CE] & ~high.enhancing).any()
    rim = high.enhancing
    assert float(high.image[T1CE][rim].mean()) > 2 * float(low.image[T1CE][rim].mean())


def test_reproducible_by_seed():
    a, b = make_brain_phantom(seed=7), make_brain_phantom(seed=7)
    assert torch.equal(a.image, b.image) and torch.equal(a.labels, b.labels)
    c = make_brain_phantom(seed=8)
    assert not torch.equal(a.labels, c.labels)


def test_dataset_balanced_and_disjoint_seeds():
    images, labels, phantoms = make_phantom_dataset(4, (24, 24, 24), seed=0)
    assert images.shape == (4, 4, 24, 24, 24)
    assert labels.tolist() == [0, 1, 0, 1]
    assert [p.grade for p in phantoms] == [GRADES[i] for i in labels.tolist()]
    other, _, _ = make_phantom_dataset(4, (24, 24, 24), seed=1)
    assert not torch.equal(images, other)


def test_given_anatomy_keeps_the_labels_and_places_the_tumour_in_the_brain():
    anatomy = make_brain_phantom((32, 32, 32), grade=None, seed=4).labels.numpy()
    p = make_brain_phantom((32, 32, 32), grade="high", seed=9, anatomy=anatomy)
    outside = ~p.tumour
    assert torch.equal(p.labels[outside], torch.from_numpy(anatomy)[outside])
    assert p.tumour.any() and not (p.tumour & ~p.brain).any()


@pytest.mark.parametrize("kwargs,match", [
    (dict(shape=(48, 48)), "shape must be three ints"),
    (dict(shape=(8, 48, 48)), "at least 16"),
    (dict(grade="medium"), "grade must be"),
    (dict(noise=-1.0), "noise and bias"),
    (dict(shape=(32, 32, 32), anatomy=np.zeros((16, 16, 16), np.uint8)), "anatomy must have shape"),
    (dict(shape=(16, 16, 16), anatomy=np.zeros((16, 16, 16), np.uint8)), "white matter"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_brain_phantom(**kwargs)


@pytest.mark.skipif(HAVE_NILEARN, reason="nilearn is installed")
def test_mni152_without_nilearn_says_how_to_get_it():
    with pytest.raises(ImportError, match="pip install nilearn"):
        mni152_anatomy((32, 32, 32))


@pytest.mark.skipif(not HAVE_NILEARN, reason="nilearn not installed (the synthetic anatomy is the default)")
def test_mni152_anatomy():
    labels = mni152_anatomy((40, 48, 40))
    assert labels.shape == (40, 48, 40) and labels.dtype == np.uint8
    for tissue in ("csf", "grey_matter", "white_matter"):
        assert (labels == TISSUES[tissue]).sum() > 100
    p = make_brain_phantom((40, 48, 40), grade="high", seed=0, anatomy=labels)
    assert p.tumour.any() and not (p.tumour & ~p.brain).any()
