"""Dynamic Window-based Training (RadiomicGAN) on a real CT slice, without training anything.

    python examples/ct_dynamic_windows.py [--th-fail 0.5] [--png ct_windows.png]

1. The fixed-growing schedule from [-1024, -769] HU, fed a made-up accuracy curve.
2. Dynamic selection on pydicom's ``CT_small.dcm`` (a 128x128 CT slice shipped with pydicom): the
   HU values where a CAM exceeds ``th_fail``, values seen once dropped, give the window. No
   discriminator is trained here, so the CAM is a stand-in (smoothed edge strength of the
   soft-tissue view), labelled as such; in training it is a frozen discriminator's Grad-CAM.
3. The selected window and three presets as channels (HUWindowTransform); with matplotlib, a PNG.

Exits 0 with a message when pydicom is not installed.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch
import torch.nn.functional as F

from mmxai_fast.ct import FixedGrowingWindowSchedule, HUWindowTransform, select_window_from_cam
from mmxai_fast.ops import hu_window

# A made-up validation accuracy per epoch (nothing is trained in this example).
MADE_UP_ACCURACY = [0.62, 0.81, 0.93, 0.70, 0.78, 0.84, 0.91, 0.88, 0.95, 0.80, 0.86, 0.90, 0.97, 0.99]


def load_ct_small() -> torch.Tensor:
    """The pydicom test slice in HU, int16 ``(128, 128)``."""
    import pydicom
    from pydicom.data import get_testdata_file

    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    hu = ds.pixel_array.astype("float64") * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    return torch.from_numpy(hu).round().to(torch.int16)


def stand_in_cam(hu: torch.Tensor) -> torch.Tensor:
    """Smoothed Sobel edge strength of the soft-tissue view, scaled to [0, 1] (a CAM stand-in)."""
    view = hu_window(hu, "soft_tissue")  # (1, H, W)
    sobel = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]])
    kernels = torch.stack([sobel, sobel.t()])[:, None]
    grad = F.conv2d(view[None], kernels, padding=1)[0]
    strength = grad.pow(2).sum(0, keepdim=True).sqrt()
    cam = F.avg_pool2d(strength[None], 9, stride=1, padding=4)[0, 0]
    return (cam - cam.min()) / (cam.max() - cam.min()).clamp_min(1e-12)


def run_schedule() -> FixedGrowingWindowSchedule:
    schedule = FixedGrowingWindowSchedule(metric_threshold=0.9, max_epochs_per_window=3, full_range=(-1024, 1000))
    print("Fixed-growing schedule (threshold 0.90 or 3 epochs per window, full range [-1024, 1000] HU):")
    for epoch, accuracy in enumerate(MADE_UP_ACCURACY):
        lower, upper = schedule.window_range
        widened = schedule.step(accuracy, epoch)
        note = f" -> widen to [{schedule.window_range[0]:.0f}, {schedule.window_range[1]:.0f}]" if widened else ""
        print(f"  epoch {epoch:2d}  window [{lower:.0f}, {upper:.0f}]  accuracy {accuracy:.2f}{note}")
    return schedule


def write_png(path: Path, hu, cam, channels, names, th_fail) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("full range [-1024, 3071]", hu_window(hu, "full")[0], "gray"),
              (f"stand-in CAM (> {th_fail} outlined)", cam, "magma")]
    panels += [(name, channel, "gray") for name, channel in zip(names, channels)]
    fig, axes = plt.subplots(1, len(panels), figsize=(3 * len(panels), 3.2))
    for ax, (title, image, cmap) in zip(axes, panels):
        ax.imshow(image.numpy(), cmap=cmap, vmin=0, vmax=1)
        if title.startswith("stand-in"):
            ax.contour((cam > th_fail).numpy(), levels=[0.5], colors="cyan", linewidths=0.8)
        ax.set_title(title, fontsize=8)
        ax.axis("off")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png.tmp", delete=False) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp.name, path)  # no partial PNG is ever left at `path`


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--th-fail", type=float, default=0.5, help="CAM threshold (default 0.5)")
    parser.add_argument("--png", type=Path, default=None, help="write a figure of the windows here")
    args = parser.parse_args(argv)

    schedule = run_schedule()
    try:
        hu = load_ct_small()
    except ImportError:
        print("pydicom is not installed: skipping the dynamic selection on CT_small.dcm (pip install pydicom)")
        return {"schedule": schedule}

    cam = stand_in_cam(hu)
    window = select_window_from_cam(hu[None], cam[None], args.th_fail)
    print(f"\nCT_small.dcm: {tuple(hu.shape)} int16, HU from {int(hu.min())} to {int(hu.max())}")
    print(f"Stand-in CAM (no discriminator is trained here): {float((cam > args.th_fail).float().mean()):.1%} "
          f"of the pixels above th_fail={args.th_fail}")
    if window is None:
        print("No HU value occurs twice under the CAM: keep the previous window")
        return {"schedule": schedule, "hu": hu, "cam": cam, "window": None}
    print(f"Selected window: [{window.lower:.0f}, {window.upper:.0f}] HU (level {window.level:.1f}, "
          f"width {window.width:.0f})")

    names = ["selected", "lung", "soft_tissue", "bone"]
    channels = HUWindowTransform([window, "lung", "soft_tissue", "bone"])(hu)
    print(f"HUWindowTransform -> channels {names}: {tuple(channels.shape)} {channels.dtype}")
    if args.png is not None:
        try:
            write_png(args.png, hu, cam, channels, names, args.th_fail)
            print(f"Figure written to {args.png}")
        except ImportError:
            print("matplotlib is not installed: no figure")
    return {"schedule": schedule, "hu": hu, "cam": cam, "window": window, "channels": channels}


if __name__ == "__main__":
    main(sys.argv[1:])
