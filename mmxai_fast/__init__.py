"""mmxai_fast: a compiled-kernel engine for explaining deep networks on multi-modal medical images."""
from ._backends import BACKEND_ENV, BackendUnavailableError, backends
from . import ops

__version__ = "0.1.0"

# Captum drop-in classes, reachable as mmxai_fast.<Name>; imported on first use so that
# `import mmxai_fast` (and the kernels alone) does not pay for importing Captum.
_ATTR_NAMES = ("FeatureAblation", "Occlusion", "ShapleyValueSampling", "ShapleyValues",
               "FeaturePermutation", "Lime", "KernelShap", "patch_captum", "unpatch_captum")

__all__ = ["BACKEND_ENV", "BackendUnavailableError", "backends", "ops", "__version__", *_ATTR_NAMES]


def __getattr__(name):
    if name in _ATTR_NAMES:
        from . import attr

        return getattr(attr, name)
    raise AttributeError(f"module 'mmxai_fast' has no attribute {name!r}")
