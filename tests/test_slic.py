"""SLIC: every backend against the reference (labels exactly), and quality against scikit-image.

What is compared:
- cpu (and triton under the interpreter) vs ``slic_reference``: integer labels exactly, over a
  grid of 2D/3D shapes, 1..4 modalities, dtypes, masks, spacing, start_label, connectivity.
  The kernels share the reference's operation order and its fixed-point centre sums, so equality
  is expected, not approximate.
- scikit-image: without connectivity enforcement the float64 labels agree on >= 99.9% of voxels
  (the same algorithm; only the centres' last bits differ); with it, boundary recall and
  under-segmentation error within 0.02 of scikit-image's on phantoms and on nibabel's real T1,
  segment count within 10% of requested, every segment connected.
"""
import os

import numpy as np
import pytest
import torch

from mmxai_fast import BackendUnavailableError
from mmxai_fast.ops import slic, slic_reference
from mmxai_fast.ops.slic_metrics import (boundary_recall, disconnected_segments, segment_quality,
                                         tissue_phantom, undersegmentation_error)
from helpers import CPU_BACKENDS, non_contiguous

skimage_slic = pytest.importorskip("skimage.segmentation").slic


def _phantom(shape, n_mod=1, seed=0):
    volumes, tissue = tissue_phantom(shape, n_mod, seed=seed)
    return torch.from_numpy(volumes), tissue


CASES = [
    # (spatial shape, modalities, n_segments, mask?, connectivity?)
    ((17, 23), 1, 12, False, True),
    ((17, 23), 3, 12, True, True),
    ((9, 14, 11), 1, 20, False, False),
    ((9, 14, 11), 2, 20, True, True),
    ((12, 10, 13), 4, 30, True, False),
    ((5, 7, 6), 1, 400, False, True),  # fewer voxels than segments
    ((1, 1, 1), 1, 5, False, True),
    ((1, 1), 2, 3, False, False),
]


def _check_matches_reference(backend, shape, n_mod, n_segments, use_mask, connect, dtype, max_num_iter=10):
    volumes, tissue = _phantom(shape, n_mod)
    volumes = volumes.to(dtype)
    mask = torch.from_numpy(tissue > 0) if use_mask else None
    kwargs = dict(n_segments=n_segments, compactness=0.1, mask=mask, channel_axis=None, modality_axis=0,
                  enforce_connectivity=connect, max_num_iter=max_num_iter)
    expected = slic_reference(volumes, **kwargs)
    out = slic(volumes, backend=backend, **kwargs)
    assert out.dtype == torch.int64 and out.shape == (n_mod,) + shape
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


@pytest.mark.parametrize("shape,n_mod,n_segments,use_mask,connect", CASES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_cpu_matches_reference(shape, n_mod, n_segments, use_mask, connect, dtype):
    _check_matches_reference("cpu", shape, n_mod, n_segments, use_mask, connect, dtype)


# The interpreter runs every Triton program in Python: few, small cases and 2 iterations.
TRITON_CASES = [((9, 10), 1, 6, False, True, torch.float32), ((5, 7, 6), 2, 8, True, True, torch.float64),
                ((4, 6, 5), 1, 200, False, False, torch.float32)]


@pytest.mark.parametrize("backend", [p for p in CPU_BACKENDS if not isinstance(p, str)])
@pytest.mark.parametrize("shape,n_mod,n_segments,use_mask,connect,dtype", TRITON_CASES)
def test_triton_matches_reference(backend, shape, n_mod, n_segments, use_mask, connect, dtype):
    _check_matches_reference(backend, shape, n_mod, n_segments, use_mask, connect, dtype, max_num_iter=2)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("start_label", [0, 1])
def test_spacing_start_label_joint_channels(backend, start_label):
    shape = (10, 12, 9) if backend == "cpu" else (4, 6, 5)
    volumes, tissue = _phantom(shape, 3)
    image = volumes.permute(1, 2, 3, 0)  # (D, H, W, C): joint clustering over the channels
    mask = tissue > 0
    kwargs = dict(n_segments=15 if backend == "cpu" else 4, compactness=0.2, spacing=(2.0, 1.0, 0.5),
                  start_label=start_label, mask=mask, max_num_iter=10 if backend == "cpu" else 2)
    out = slic(image, backend=backend, **kwargs)
    torch.testing.assert_close(out, slic_reference(image, **kwargs), rtol=0, atol=0)
    assert int(out[torch.from_numpy(~mask)].unique().numel()) == 1
    assert int(out[torch.from_numpy(~mask)][0]) == start_label - 1
    assert int(out[torch.from_numpy(mask)].min()) == start_label


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_non_contiguous_input(backend):
    volumes, _ = _phantom((9, 11, 8), 1)
    volumes = volumes[0]
    view = non_contiguous(volumes).transpose(1, 2)
    assert not view.is_contiguous()
    kwargs = dict(n_segments=10, compactness=0.1, channel_axis=None)
    torch.testing.assert_close(slic(view, backend=backend, **kwargs), slic(view.contiguous(), backend=backend, **kwargs),
                               rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_empty_and_full_masks(backend):
    volumes, _ = _phantom((6, 7, 5), 2)
    none = torch.zeros((6, 7, 5), dtype=torch.bool)
    out = slic(volumes, n_segments=5, mask=none, channel_axis=None, modality_axis=0, backend=backend)
    assert (out == 0).all()
    out0 = slic(volumes, n_segments=5, mask=none, channel_axis=None, modality_axis=0, start_label=0, backend=backend)
    assert (out0 == -1).all()
    full = slic(volumes, n_segments=5, mask=~none, channel_axis=None, modality_axis=0, backend=backend)
    assert full.min() >= 1
    # one mask per modality: the second modality has no foreground
    masks = torch.stack([~none, none])
    per = slic(volumes, n_segments=5, mask=masks, channel_axis=None, modality_axis=0, backend=backend)
    assert per[0].min() >= 1 and (per[1] == 0).all()


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_modalities_get_their_own_ids(backend):
    volumes, tissue = _phantom((12, 14, 10), 4)
    mask = tissue > 0
    joint = slic(volumes, n_segments=20, compactness=0.1, mask=mask, channel_axis=None, modality_axis=0,
                 backend=backend)
    offset = 0
    for m in range(4):
        alone = slic(volumes[m], n_segments=20, compactness=0.1, mask=mask, channel_axis=None, backend=backend)
        ids = joint[m][torch.from_numpy(mask)]
        torch.testing.assert_close(joint[m], torch.where(alone > 0, alone + offset, alone), rtol=0, atol=0)
        assert int(ids.min()) == offset + 1
        offset = int(ids.max())


def test_numpy_in_numpy_out_and_2d():
    volumes, tissue = tissue_phantom((40, 36), 1)
    out = slic(volumes[0], n_segments=20, compactness=0.1, channel_axis=None, backend="cpu")
    assert isinstance(out, np.ndarray) and out.shape == (40, 36) and out.dtype == np.int64
    assert disconnected_segments(out) == 0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("use_mask", [False, True])
def test_labels_agree_with_skimage_without_connectivity(dim, use_mask):
    shape = (48, 40) if dim == 2 else (20, 24, 18)
    volumes, tissue = tissue_phantom(shape, 1, seed=3)
    image = volumes[0].astype(np.float64)
    mask = tissue > 0 if use_mask else None
    kwargs = dict(n_segments=30, compactness=0.1, channel_axis=None, enforce_connectivity=False, mask=mask)
    ours = slic(image, backend="cpu", **kwargs)
    theirs = skimage_slic(image, **kwargs)
    region = mask if mask is not None else np.ones(shape, bool)
    assert (ours[region] == theirs[region]).mean() >= 0.999


def _quality_side_by_side(ours, theirs, truth, region):
    q_ours = segment_quality(ours, truth, region, background=0)
    q_theirs = segment_quality(theirs, truth, region, background=0)
    return q_ours, q_theirs


@pytest.mark.parametrize("use_mask", [False, True])
@pytest.mark.parametrize("compactness", [0.1, 1.0])
def test_quality_matches_skimage_on_phantom(use_mask, compactness):
    volumes, tissue = tissue_phantom((40, 48, 32), 1, seed=1)  # the 120-seed grid fits exactly
    mask = tissue > 0 if use_mask else None
    region = mask if use_mask else np.ones(tissue.shape, bool)
    n_segments = 120
    kwargs = dict(n_segments=n_segments, compactness=compactness, channel_axis=None, mask=mask)
    ours = slic(volumes[0], backend="cpu", **kwargs)
    theirs = skimage_slic(volumes[0], **kwargs)
    q_ours, q_theirs = _quality_side_by_side(ours, theirs, tissue, region)
    assert abs(q_ours["boundary_recall"] - q_theirs["boundary_recall"]) <= 0.02, (q_ours, q_theirs)
    assert q_ours["undersegmentation_error"] <= q_theirs["undersegmentation_error"] + 0.02, (q_ours, q_theirs)
    # Within 10% of the request, or where scikit-image itself is not (a flat background merges
    # segments at low compactness) within 10% of scikit-image's count.
    assert (abs(q_ours["n_segments"] - n_segments) <= 0.1 * n_segments
            or abs(q_ours["n_segments"] - q_theirs["n_segments"]) <= 0.1 * n_segments), (q_ours, q_theirs)
    if use_mask or compactness >= 1:
        assert abs(q_ours["n_segments"] - n_segments) <= 0.1 * n_segments, q_ours
    assert q_ours["disconnected_segments"] == 0


def _anatomical():
    import nibabel

    path = os.path.join(os.path.dirname(nibabel.__file__), "tests", "data", "anatomical.nii")
    image = nibabel.load(path)
    return image.get_fdata().astype(np.float32), tuple(float(z) for z in image.header.get_zooms()[:3])


def test_quality_matches_skimage_on_nibabel_t1():
    from skimage.filters import threshold_multiotsu

    volume, zooms = _anatomical()
    mask = volume > volume.mean() * 0.5
    # Proxy truth for a real scan: three intensity classes (multi-Otsu) inside the head.
    truth = np.digitize(volume, threshold_multiotsu(volume[mask], classes=3)) + 1
    truth[~mask] = 0
    n_segments = 100
    kwargs = dict(n_segments=n_segments, compactness=0.1, spacing=zooms, channel_axis=None, mask=mask)
    ours = slic(volume, backend="cpu", **kwargs)
    theirs = skimage_slic(volume, **kwargs)
    q_ours, q_theirs = _quality_side_by_side(ours, theirs, truth, mask)
    assert abs(q_ours["boundary_recall"] - q_theirs["boundary_recall"]) <= 0.02, (q_ours, q_theirs)
    assert q_ours["undersegmentation_error"] <= q_theirs["undersegmentation_error"] + 0.02, (q_ours, q_theirs)
    # On this irregular head mask some clusters fall apart into pieces of >= half a segment, which
    # become segments of their own (scikit-image leaves several of them disconnected instead):
    # no more segments than scikit-image has connected pieces, and within 15% of the request.
    assert q_ours["disconnected_segments"] == 0
    assert q_ours["n_segments"] <= q_theirs["n_pieces"], (q_ours, q_theirs)
    assert abs(q_ours["n_segments"] - n_segments) <= 0.15 * n_segments, q_ours


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_connectivity_enforced(backend):
    # Noisy stripes make scattered pieces; after enforcement each segment is one 6-connected piece.
    rng = np.random.default_rng(0)
    image = (np.indices((14, 16, 12)).sum(0) % 4 == 0).astype(np.float32) + rng.normal(0, 0.3, (14, 16, 12))
    loose = slic(image, n_segments=25, compactness=0.05, channel_axis=None, enforce_connectivity=False,
                 backend=backend)
    tight = slic(image, n_segments=25, compactness=0.05, channel_axis=None, backend=backend)
    assert disconnected_segments(loose) > 0  # the check can fail
    assert disconnected_segments(tight) == 0
    assert np.array_equal(np.unique(tight), np.arange(1, tight.max() + 1))  # consecutive ids


def test_metrics_can_fail():
    truth = np.zeros((10, 10), int)
    truth[:, 5:] = 1
    assert boundary_recall(truth + 1, truth) == 1.0
    assert boundary_recall(np.zeros_like(truth), truth) == 0.0
    assert undersegmentation_error(truth, truth) == 0.0
    assert undersegmentation_error(np.zeros_like(truth), truth) == 1.0
    two_pieces = np.zeros((5, 5), int)
    two_pieces[0, 0] = two_pieces[4, 4] = 1
    assert disconnected_segments(two_pieces) == 1


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(start_label=2), ValueError, "start_label"),
    (dict(sigma=1.0), ValueError, "sigma"),
    (dict(slic_zero=True), ValueError, "slic_zero"),
    (dict(convert2lab=True), ValueError, "convert2lab"),
    (dict(max_size_factor=4), ValueError, "max_size_factor"),
    (dict(n_segments=0), ValueError, "n_segments"),
    (dict(compactness=-1.0), ValueError, "compactness"),
    (dict(spacing=(1.0, 2.0)), ValueError, "spacing"),
    (dict(mask=np.ones((3, 3, 3), bool)), ValueError, "mask"),
    (dict(mask=np.ones((6, 7, 5), np.float32)), TypeError, "mask"),
    (dict(modality_axis=0, channel_axis=0), ValueError, "modality_axis"),
    (dict(backend="nope"), ValueError, "backend"),
])
def test_bad_arguments(kwargs, error, match):
    image = torch.rand(6, 7, 5)
    kwargs = {"channel_axis": None, **kwargs}
    with pytest.raises(error, match=match):
        slic(image, **kwargs)


def test_bad_images():
    with pytest.raises(TypeError, match="image"):
        slic([[1.0]], channel_axis=None)
    with pytest.raises(ValueError, match="channel_axis"):
        slic(torch.rand(5, 5))
    with pytest.raises(ValueError, match="spatial dims"):
        slic(torch.rand(5), channel_axis=None)
    nan = torch.rand(4, 5, 6)
    nan[0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        slic(nan, channel_axis=None, backend="cpu")
    mask = torch.ones(4, 5, 6, dtype=torch.bool)
    mask[0, 0, 0] = False  # a masked-out NaN is fine
    assert slic(nan, channel_axis=None, mask=mask, backend="cpu")[0, 0, 0] == 0


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (CPU twins: test_cpu_matches_reference, test_triton_matches_reference)")
@pytest.mark.parametrize("use_mask", [False, True])
def test_gpu_triton_and_cuda_connectivity_match_reference(use_mask):
    volumes, tissue = _phantom((24, 28, 20), 2)
    mask = torch.from_numpy(tissue > 0) if use_mask else None
    kwargs = dict(n_segments=40, compactness=0.1, channel_axis=None, modality_axis=0)
    out = slic(volumes.cuda(), mask=mask.cuda() if use_mask else None, backend="triton", **kwargs)
    torch.testing.assert_close(out.cpu(), slic_reference(volumes, mask=mask, **kwargs), rtol=0, atol=0)


def test_forced_backend_unavailable():
    with pytest.raises(BackendUnavailableError, match="cuda"):
        slic(torch.rand(4, 5, 6), channel_axis=None, backend="cuda")


def test_torch_compile_fullgraph():
    volumes, tissue = _phantom((6, 7, 5), 2)
    mask = torch.from_numpy(tissue > 0)

    def f(v):
        return slic(v, n_segments=4, compactness=0.1, mask=mask, channel_axis=None, modality_axis=0) * 2

    compiled = torch.compile(f, backend="eager", fullgraph=True)
    torch.testing.assert_close(compiled(volumes), f(volumes), rtol=0, atol=0)


@pytest.mark.parametrize("compactness", [1e-40, 1e40, float("nan"), float("inf"), True, 0.0])
def test_compactness_that_would_label_nothing_is_rejected(compactness):
    with pytest.raises(ValueError, match=r"compactness must be a finite number in \[1e-10, 1e\+10\]"):
        slic(torch.rand(5, 6, 4), compactness=compactness, channel_axis=None)
