"""mmxai_fast: a compiled-kernel engine for explaining deep networks on multi-modal medical images."""
from ._backends import BACKEND_ENV, BackendUnavailableError, backends
from . import ops
from ._version import __version__

# Captum drop-in classes, reachable as mmxai_fast.<Name>; imported on first use so that
# `import mmxai_fast` (and the kernels alone) does not pay for importing Captum.
_ATTR_NAMES = ("FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValues",
               "FeaturePermutation", "Lime", "KernelShap", "patch_captum", "unpatch_captum")

# The case-to-heatmap pipeline's entry point, mmxai_fast.explain (imports Captum, nibabel... on use).
_PIPELINE_NAMES = ("explain",)

__all__ = ["BACKEND_ENV", "BackendUnavailableError", "backends", "ops", "__version__", *_ATTR_NAMES,
           *_PIPELINE_NAMES]


def __getattr__(name):
    if name in _ATTR_NAMES:
        from . import attr

        return getattr(attr, name)
    if name in _PIPELINE_NAMES:
        from . import pipeline

        return getattr(pipeline, name)
    raise AttributeError(f"module 'mmxai_fast' has no attribute {name!r}")
