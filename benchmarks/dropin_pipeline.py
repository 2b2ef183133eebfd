"""A research pipeline written as such pipelines are: Captum imported at the top, a 4-modality 3D
CNN, SLIC superpixels per modality, batch 1 and Captum's default ``perturbations_per_eval``.

Run it plainly (Captum) or under ``mmxai-fast run`` (the engine); ``benchmarks/bench_dropin.py``
does both and compares. Prints one JSON line per method: {"method", "wall_s", "sum"} and saves the
attributions to --out.

    python benchmarks/dropin_pipeline.py --model vgg --size 64 --out attrs.pt
"""
import argparse
import json
import time

import torch
from captum.attr import FeatureAblation, KernelShap, Lime, Occlusion, ShapleyValueSampling

from mmxai_fast.models import DenseNet3D, VGG3D
from mmxai_fast.ops import slic
from mmxai_fast.phantom import make_brain_phantom


def build_model(name: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if name == "monai-densenet121":  # MONAI's DenseNet-121 (stride-2 stem, dense blocks from 1/4 resolution)
        from monai.networks.nets import DenseNet121

        return DenseNet121(spatial_dims=3, in_channels=4, out_channels=2).eval()
    model = VGG3D(in_channels=4, num_classes=2) if name == "vgg" else DenseNet3D(in_channels=4, num_classes=2)
    return model.eval()


def superpixels(volume: torch.Tensor, n_segments: int) -> torch.Tensor:
    """Per-modality SLIC ids (those of modality ``m`` follow those of ``m - 1``): [1, 4, D, H, W]."""
    labels = slic(volume[0], n_segments=n_segments, compactness=0.1, channel_axis=None, modality_axis=0,
                  start_label=0)
    return labels.unsqueeze(0).long()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=["vgg", "densenet", "monai-densenet121"], default="vgg")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--segments", type=int, default=16, help="SLIC segments per modality")
    parser.add_argument("--methods", nargs="+", default=["FeatureAblation", "ShapleyValueSampling", "Occlusion",
                                                         "Lime", "KernelShap"])
    parser.add_argument("--samples", type=int, default=48, help="Lime/KernelShap samples")
    parser.add_argument("--window", type=int, default=0, help="Occlusion window and stride (default size // 4)")
    parser.add_argument("--group", type=int, default=1, help="merge this many consecutive superpixel ids into one "
                                                             "feature (fewer features than a real run)")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build_model(args.model)
    case = make_brain_phantom((args.size,) * 3, grade="high", seed=0)
    volume = torch.as_tensor(case.image).unsqueeze(0)
    mask = superpixels(volume, args.segments) // args.group
    window = args.window or max(4, args.size // 4)
    calls = {
        "FeatureAblation": lambda: FeatureAblation(model).attribute(volume, target=1, feature_mask=mask),
        "ShapleyValueSampling": lambda: ShapleyValueSampling(model).attribute(volume, target=1, feature_mask=mask,
                                                                              n_samples=1),
        "Occlusion": lambda: Occlusion(model).attribute(volume, sliding_window_shapes=(4, window, window, window),
                                                        strides=(4, window, window, window), target=1),
        "Lime": lambda: Lime(model).attribute(volume, target=1, feature_mask=mask, n_samples=args.samples),
        "KernelShap": lambda: KernelShap(model).attribute(volume, target=1, feature_mask=mask, n_samples=args.samples),
    }
    results = {}
    for method in args.methods:
        torch.manual_seed(1)
        start = time.perf_counter()
        attr = calls[method]()
        wall = time.perf_counter() - start
        results[method] = attr
        print(json.dumps({"method": method, "wall_s": wall, "features": int(mask.max()) + 1,
                          "sum": float(attr.double().sum())}), flush=True)
    torch.save(results, args.out)


if __name__ == "__main__":
    main()
