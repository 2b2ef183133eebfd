"""A module attribute replaced while any block asking for it is open.

The Evaluator's CPU kernels (:mod:`~mmxai_fast.attr._onednn_conv`,
:mod:`~mmxai_fast.attr._channels_last_pool`) stand in for ``torch.nn.functional`` functions
during model calls. Blocks nest and may open in several threads, so the replacement is counted:
installed when the first block opens, the original restored when the last one closes.
"""
from __future__ import annotations

import contextlib
import threading
from typing import Any, Callable, Iterator, Optional

__all__ = ["FunctionPatch"]


class FunctionPatch:
    """``owner.name`` replaced by ``replacement`` inside :meth:`block`; the original in :attr:`original`."""

    def __init__(self, owner: Any, name: str, replacement: Callable) -> None:
        self.owner, self.name, self.replacement = owner, name, replacement
        self.original = getattr(owner, name)
        self._lock = threading.Lock()
        self._depth = 0

    @contextlib.contextmanager
    def block(self, on_first: Optional[Callable[[], None]] = None) -> Iterator[None]:
        """The replacement is installed for the block (``on_first``: run, under the lock, when this
        block installs it)."""
        with self._lock:
            if self._depth == 0:
                if on_first is not None:
                    on_first()
                setattr(self.owner, self.name, self.replacement)
            self._depth += 1
        try:
            yield
        finally:
            with self._lock:
                self._depth -= 1
                if self._depth == 0:
                    setattr(self.owner, self.name, self.original)
