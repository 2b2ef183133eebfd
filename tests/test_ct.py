import numpy as np
import pytest
import torch

from mmxai_fast.ct import FixedGrowingWindowSchedule, HUWindowTransform, select_window_from_cam
from mmxai_fast.ops import HU_WINDOW_PRESETS, HUWindow, hu_window
from helpers import CPU_BACKENDS

ALL_BACKENDS = ["reference"] + CPU_BACKENDS


def _hu(shape):
    return torch.randint(-1024, 3072, shape, dtype=torch.int16)


# --------------------------------------------------------------------------- HUWindowTransform


def test_transform_windows_become_channels():
    volume = _hu((6, 9, 11))
    t = HUWindowTransform(["brain", "lung", (500.0, 2000.0)])
    out = t(volume)
    assert out.shape == (3, 6, 9, 11) and out.dtype == torch.float32
    assert torch.equal(out, hu_window(volume, ["brain", "lung", (500.0, 2000.0)]))
    assert torch.equal(t(volume.numpy()), out)  # numpy input, as a pydicom/nibabel loader gives


def test_transform_replaces_a_singleton_channel():
    batch = _hu((2, 1, 4, 5, 6))
    t = HUWindowTransform(["brain", "bone"], channel_dim=1)
    out = t(batch)
    assert out.shape == (2, 2, 4, 5, 6) and out.is_contiguous()
    for n in range(2):
        assert torch.equal(out[n], hu_window(batch[n, 0], ["brain", "bone"]))
    sample = HUWindowTransform(["brain", "bone"], channel_dim=0, out_dtype=torch.float64)(batch[0])
    assert sample.shape == (2, 4, 5, 6) and sample.dtype == torch.float64
    with pytest.raises(ValueError, match=r"singleton channel at dim 1, got shape \(2, 3, 4\)"):
        t(_hu((2, 3, 4)))
    with pytest.raises(TypeError, match="volume must be a torch.Tensor or numpy array, got list"):
        t([1, 2])
    assert "HUWindowTransform(windows=[(40, 80), (500, 2000)]" in repr(t)


def test_transform_in_a_dataloader():
    volumes = [_hu((3, 8, 8)) for _ in range(5)]

    class CT(torch.utils.data.Dataset):
        def __init__(self):
            self.transform = HUWindowTransform(["brain", "subdural", "bone"])

        def __len__(self):
            return len(volumes)

        def __getitem__(self, i):
            return self.transform(volumes[i])

    batches = list(torch.utils.data.DataLoader(CT(), batch_size=2))
    assert [b.shape for b in batches] == [(2, 3, 3, 8, 8), (2, 3, 3, 8, 8), (1, 3, 3, 8, 8)]
    assert torch.equal(batches[2][0], hu_window(volumes[4], ["brain", "subdural", "bone"]))


@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_transform_backends(backend):
    volume = _hu((2, 1, 3, 7))
    out = HUWindowTransform("lung", channel_dim=1, backend=backend)(volume)
    torch.testing.assert_close(out, HUWindowTransform("lung", channel_dim=1, backend="reference")(volume))


# --------------------------------------------------------------------------- fixed growing schedule


def test_schedule_windows_cover_the_range():
    schedule = FixedGrowingWindowSchedule(metric_threshold=0.9, max_epochs_per_window=10)
    windows = schedule.windows()
    assert [(w.lower, w.upper) for w in windows[:3]] == [(-1024, -769), (-1024, -513), (-1024, -257)]
    assert (windows[-1].lower, windows[-1].upper) == (-1024, 3071) and len(windows) == 16
    paper = FixedGrowingWindowSchedule(0.9, 10, full_range=(-1024, 1000)).windows()
    assert [w.upper for w in paper] == [-769, -513, -257, -1, 255, 511, 767, 1000]


def test_schedule_steps_on_threshold_or_epoch_cap():
    s = FixedGrowingWindowSchedule(metric_threshold=0.8, max_epochs_per_window=3)
    assert s.window_range == (-1024, -769) and s.window == HUWindow.from_range(-1024, -769)
    assert s.step(0.5, 0) is False and s.step(0.85, 1) is True  # threshold passed
    assert s.window_range == (-1024, -513)
    assert [s.step(0.1, e) for e in (2, 3, 4)] == [False, False, True]  # 3 epochs at the window
    assert s.window_range == (-1024, -257)
    assert [e for e, _ in s.history] == [1, 4]
    epoch = 5
    while not s.done:
        s.step(0.99, epoch)
        epoch += 1
    assert s.window_range == (-1024, 3071) and epoch == 5 + 13
    assert s.step(0.99, epoch) is False and s.window_range == (-1024, 3071)


def test_schedule_lower_is_better_and_state_dict():
    s = FixedGrowingWindowSchedule(metric_threshold=0.2, max_epochs_per_window=100, higher_is_better=False,
                                   step_hu=500, full_range=(-1024, 0))
    assert s.step(0.3, 0) is False and s.step(0.1, 1) is True and s.window_range == (-1024, -269)
    state = s.state_dict()
    restored = FixedGrowingWindowSchedule(metric_threshold=0.2, max_epochs_per_window=100, higher_is_better=False,
                                          step_hu=500, full_range=(-1024, 0))
    restored.load_state_dict(state)
    assert restored.window_range == s.window_range and restored.history == s.history
    assert restored.step(0.0, 2) is True and restored.window_range == (-1024, 0) and restored.done
    with pytest.raises(ValueError, match="epoch must increase"):
        restored.step(0.0, 2)


def test_schedule_bad_arguments():
    with pytest.raises(ValueError, match="max_epochs_per_window must be an int >= 1, got 0"):
        FixedGrowingWindowSchedule(0.9, 0)
    with pytest.raises(ValueError, match="step_hu must be > 0"):
        FixedGrowingWindowSchedule(0.9, 3, step_hu=0)
    with pytest.raises(ValueError, match="full_range"):
        FixedGrowingWindowSchedule(0.9, 3, start=(-2000, -769))
    s = FixedGrowingWindowSchedule(0.9, 3)
    with pytest.raises(ValueError, match="metric must be a finite number, got nan"):
        s.step(float("nan"), 0)
    with pytest.raises(ValueError, match="epoch must be an int >= 0"):
        s.step(0.5, -1)


# --------------------------------------------------------------------------- dynamic selection


def _numpy_selection(hu, cam, th_fail, min_count=2, per_image=True):
    """The paper's procedure with np.unique, image by image."""
    kept = []
    if not per_image:
        hu, cam = hu.reshape(1, -1), cam.reshape(1, -1)
    for h, c in zip(hu, cam):
        values, counts = np.unique(h[(c > th_fail) & (h >= -1024) & (h <= 3071)], return_counts=True)
        kept.append(values[counts >= min_count])
    kept = np.concatenate(kept)
    return (int(kept.min()), int(kept.max())) if kept.size else None


def _smooth_cam(shape, generator=None):
    coarse = torch.rand((shape[0], 1) + tuple(max(s // 4, 1) for s in shape[1:]), generator=generator)
    mode = "bilinear" if len(shape) == 3 else "trilinear"
    return torch.nn.functional.interpolate(coarse, size=shape[1:], mode=mode, align_corners=False)[:, 0]


@pytest.mark.parametrize("backend", ALL_BACKENDS)
@pytest.mark.parametrize("shape", [(3, 40, 36), (2, 5, 17, 19)])
@pytest.mark.parametrize("per_image", [True, False])
def test_selection_matches_numpy(backend, shape, per_image):
    hu = torch.randint(-1100, 1200, shape, dtype=torch.int16)  # dense enough for repeated values
    cam = _smooth_cam(shape)
    window = select_window_from_cam(hu, cam, 0.6, per_image=per_image, backend=backend)
    expected = _numpy_selection(hu.numpy(), cam.numpy(), 0.6, per_image=per_image)
    assert (window.lower, window.upper) == expected


@pytest.mark.parametrize("backend", ALL_BACKENDS)
def test_selection_drops_singletons(backend):
    hu = torch.full((2, 8, 8), 40, dtype=torch.int16)
    hu[0, 0, 0], hu[1, 0, 0] = -900, 2500  # each seen once, in its own image
    hu[0, 1, :2] = 1000  # seen twice in image 0
    cam = torch.ones(2, 8, 8)
    cam[1, 4:] = 0.1  # below th_fail: the values there do not count
    hu[1, 4:] = -1000
    window = select_window_from_cam(hu, cam, 0.5, backend=backend)
    assert (window.lower, window.upper) == (40, 1000)
    # Pooled over images -900 and 2500 still occur once; min_count=1 keeps them.
    assert (select_window_from_cam(hu, cam, 0.5, per_image=False).upper) == 1000
    keep_all = select_window_from_cam(hu, cam, 0.5, min_count=1, backend=backend)
    assert (keep_all.lower, keep_all.upper) == (-900, 2500)
    # A value seen once in each of two images: dropped per image, kept when pooled.
    hu2 = torch.full((2, 4, 4), 0, dtype=torch.int16)
    hu2[:, 0, 0] = 700
    assert select_window_from_cam(hu2, torch.ones(2, 4, 4), 0.5).upper == 1  # only 0 kept: [0, 1]
    assert select_window_from_cam(hu2, torch.ones(2, 4, 4), 0.5, per_image=False).upper == 700


def test_selection_empty_and_float_hu():
    hu = _hu((2, 6, 6))
    assert select_window_from_cam(hu, torch.zeros(2, 6, 6), 0.5) is None
    assert select_window_from_cam(hu[:0], torch.zeros(0, 6, 6), 0.5) is None
    hu_f = torch.full((1, 4, 4), 99.6)
    hu_f[0, 0, :3] = -5.2
    window = select_window_from_cam(hu_f, torch.ones(1, 4, 4), 0.5)
    assert (window.lower, window.upper) == (-5, 100)


def test_selection_bad_arguments():
    hu, cam = _hu((2, 6, 6)), torch.rand(2, 6, 6)
    with pytest.raises(ValueError, match=r"hu must be a batch of images .* got shape \(6, 6\)"):
        select_window_from_cam(hu[0], cam[0], 0.5)
    with pytest.raises(ValueError, match=r"cam must have the shape of hu \(2, 6, 6\).*got \(2, 3, 3\)"):
        select_window_from_cam(hu, cam[:, :3, :3], 0.5)
    with pytest.raises(TypeError, match="cam must have a floating dtype, got torch.int64"):
        select_window_from_cam(hu, (cam > 0.5).long(), 0.5)
    with pytest.raises(TypeError, match="cam must be a torch.Tensor"):
        select_window_from_cam(hu, cam.numpy(), 0.5)
    with pytest.raises(ValueError, match="min_count must be an int >= 1"):
        select_window_from_cam(hu, cam, 0.5, min_count=0)
    with pytest.raises(ValueError, match="hu_range must be two ints"):
        select_window_from_cam(hu, cam, 0.5, hu_range=(-1024.0, 3071))
