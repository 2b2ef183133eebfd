"""First model call with a clear error for a target that does not index the model's output."""
from __future__ import annotations

from typing import Optional

from captum._utils.common import _run_forward
from torch import Tensor

from ._errors import AttributionInputError
from ._evaluator import Evaluator


def initialize_checked(engine: Evaluator, keep_row: Optional[Tensor] = None) -> Tensor:
    """:meth:`Evaluator.initialize`, turning an indexing failure of the target into an
    :class:`AttributionInputError` that names the target and the output shape (found by one more
    call without the target, on the failure path only)."""
    try:
        return engine.initialize(keep_row)
    except (IndexError, RuntimeError) as err:
        if engine.target is None:
            raise
        try:
            out = _run_forward(engine.forward_func, engine.inputs, None, engine.additional_forward_args)
        except Exception:
            raise err from None
        shape = tuple(out.shape) if isinstance(out, Tensor) else ()
        raise AttributionInputError(
            f"target {engine.target!r} does not index forward_func's output: with {engine.num_examples} "
            f"examples it has shape {shape} ({err})") from err
