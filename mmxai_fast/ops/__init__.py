"""Public functional API of the engine's kernels.

Each op has a plain-PyTorch ``*_reference`` oracle, a C++ CPU kernel and a Triton kernel; the
backend is chosen automatically from the tensors' device or forced with ``backend=``.
"""
from .codeword_histogram import codeword_histogram, codeword_histogram_reference
from .hu_window import HU_WINDOW_PRESETS, HUWindow, hu_window, hu_window_reference
from .occlusion import (
                        OcclusionWindows,
                        occlusion_attribution,
                        occlusion_attribution_reference,
                        occlusion_batch,
                        occlusion_batch_reference,
)
from .perturb import perturb, perturb_reference
from .shapley import (
                        random_permutations,
                        shapley_accumulate,
                        shapley_accumulate_reference,
                        shapley_coalitions,
                        shapley_coalitions_reference,
                        shapley_prefix_rows,
                        shapley_stats,
)
from .slic import SlicProblem, slic, slic_reference
from .thresholded_value_histogram import (
                        thresholded_value_histogram,
                        thresholded_value_histogram_reference,
)
from .vq_nearest import vq_nearest, vq_nearest_reference

__all__ = [
    "OcclusionWindows", "occlusion_batch", "occlusion_batch_reference", "occlusion_attribution",
    "occlusion_attribution_reference",
    "perturb", "perturb_reference",
    "random_permutations", "shapley_prefix_rows", "shapley_coalitions", "shapley_coalitions_reference",
    "shapley_accumulate", "shapley_accumulate_reference", "shapley_stats",
    "vq_nearest", "vq_nearest_reference", "codeword_histogram", "codeword_histogram_reference",
    "slic", "slic_reference", "SlicProblem",
    "thresholded_value_histogram", "thresholded_value_histogram_reference",
    "HU_WINDOW_PRESETS", "HUWindow", "hu_window", "hu_window_reference",
]
