"""mmxai_fast: a compiled-kernel engine for explaining deep networks on multi-modal medical images."""
from ._backends import BACKEND_ENV, BackendUnavailableError, backends
from . import ops

__version__ = "0.1.0"
__all__ = ["BACKEND_ENV", "BackendUnavailableError", "backends", "ops", "__version__"]
