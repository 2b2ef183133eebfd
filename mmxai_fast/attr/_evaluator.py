"""The :class:`Evaluator`: the one place where the model is run.

An attribution method chooses **rows** (coalition rows ``keep [R, F]``, window ids ``[R]``,
...); a **perturber** (:mod:`mmxai_fast.attr._perturbers`) turns a chunk of rows into the
model's inputs; the evaluator does everything else about running the model:

- chunking: :meth:`Evaluator.chunk_size` rows per model call (``perturbations_per_eval``, or
  for ``"auto"`` a memory budget), halved and retried on ``torch.OutOfMemoryError``;
- Captum's expansion of ``target`` and ``additional_forward_args`` per chunk size
  (``_expand_target``, ``_expand_additional_forward_args``), cached;
- output checks: the first call fixes the per-row output shape, later chunks must return
  ``rows`` times as many leading entries; NaN outputs raise naming the first model call;
- the progress bar (one tick per model call) and reused input buffers (:meth:`Evaluator.buffer`).

Every model call goes through :meth:`Evaluator._call_model` and every chunk-size decision through
:meth:`Evaluator.chunk_size`: model-speed policies (memory format, ``inference_mode``, a
throughput-based chunk size) belong in those two methods. :meth:`Evaluator.run_rows` ``(rows,
previous_rows)`` is the seam for incremental inference: it sees the rows of the chunk and those
of the previous chunk (None for the first); this dense evaluator ignores ``previous_rows``.
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from captum._utils.common import _expand_additional_forward_args, _expand_target, _run_forward, _select_targets
from captum._utils.progress import progress as captum_progress
from torch import Tensor

from ._errors import AttributionInputError

__all__ = ["Evaluator", "check_perturbations_per_eval", "row_runner", "RowRunner"]

#: ``runner(evaluator, num_rows, make_rows) -> outputs`` standing in for :meth:`Evaluator.run`
#: while :func:`row_runner` is active (e.g. ranks of a job each evaluating a share of the rows
#: with :meth:`Evaluator.run_local`, then combining the outputs: ``mmxai_fast.cohort.rows``).
RowRunner = Callable[["Evaluator", int, Callable[[int, int], Tensor]], Tensor]
_ROW_RUNNER: "contextvars.ContextVar[Optional[RowRunner]]" = contextvars.ContextVar("row_runner", default=None)


@contextlib.contextmanager
def row_runner(runner: Optional[RowRunner]):
    """Every :meth:`Evaluator.run` inside the block goes through ``runner`` (None: run locally)."""
    token = _ROW_RUNNER.set(runner)
    try:
        yield
    finally:
        _ROW_RUNNER.reset(token)

#: Row cap and memory budgets (bytes of perturbed inputs per model call) for ``"auto"``.
AUTO_MAX_ROWS = 512
AUTO_CPU_BUDGET = 256 * 2**20
AUTO_CUDA_FRACTION = 0.125

#: ``perturber(rows, buffer) -> model inputs``; ``buffer(i, rows)`` is :meth:`Evaluator.buffer`
#: on the model-call path and None elsewhere (then the perturber allocates).
Perturber = Callable[[Tensor, Optional[Callable[[int, int], Tensor]]], Tuple[Tensor, ...]]


def check_perturbations_per_eval(value: Any) -> Union[int, str]:
    """``perturbations_per_eval`` must be an int >= 1 or ``"auto"``."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise AttributionInputError(
            f"perturbations_per_eval must be an int >= 1 or 'auto', got {value!r}")
    return value


def _as_output_tensor(output: Any) -> Tensor:
    """Captum's ``_parse_forward_out``: tensors pass, ints/floats become 0-d tensors."""
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (int, float)) and not isinstance(output, bool):
        return torch.tensor(output, dtype=torch.int64 if isinstance(output, int) else torch.float64)
    raise AttributionInputError(
        f"forward_func must return a tensor, int or float, got {type(output).__name__}")


class Evaluator:
    """Run ``forward_func`` on chunks of rows turned into inputs by ``perturber``.

    Args:
        forward_func: the model or function, called like Captum's ``_run_forward``.
        inputs: formatted inputs (tuple of tensors, ``N = inputs[0].shape[0]`` examples).
        perturber: see :data:`Perturber`.
        target: Captum target for ``N`` examples.
        additional_forward_args: formatted tuple or None.
        perturbations_per_eval: rows per model call (int >= 1) or ``"auto"``.
        check_nan: raise when the model returns NaN.
        check_batch_output: called with no argument when the first output is one value per
            batch (Captum's scalar-per-batch mode), to reject what that mode cannot explain.
    """

    def __init__(self, forward_func: Callable, inputs: Tuple[Tensor, ...], perturber: Perturber,
                 target: Any = None, additional_forward_args: Optional[Tuple[Any, ...]] = None,
                 perturbations_per_eval: Union[int, str] = 1, *, check_nan: bool = True,
                 check_batch_output: Optional[Callable[[], None]] = None) -> None:
        self.forward_func = forward_func
        self.inputs = inputs
        self.num_examples = inputs[0].shape[0]
        self.perturber = perturber
        self.target = target
        self.additional_forward_args = additional_forward_args
        self.perturbations_per_eval = check_perturbations_per_eval(perturbations_per_eval)
        self.check_nan = check_nan
        self.check_batch_output = check_batch_output
        self.progress: Any = None
        self.row_shape: Optional[Tuple[int, ...]] = None
        self.agg_mode = False
        self.rows_per_eval: Optional[int] = None
        #: Samples one row carries (Lime: one per example); an int ``perturbations_per_eval``
        #: counts samples, so a call holds ``perturbations_per_eval // samples_per_row`` rows.
        self.samples_per_row = 1
        self.num_model_calls = 0
        self._expanded: Dict[int, Tuple[Any, Any]] = {}
        self._buffers: Dict[int, Tensor] = {}
        self._nan_flags: List[Tuple[str, Tensor]] = []

    # ------------------------------------------------------------------ the two policy seams

    def chunk_size(self, failed_rows: Optional[int] = None) -> int:
        """Rows per model call: ``perturbations_per_eval``, 1 for scalar-per-batch models, and for
        ``"auto"`` the most rows whose perturbed inputs fit the memory budget (at most
        :data:`AUTO_MAX_ROWS`); after a chunk of ``failed_rows`` ran out of memory, half of it."""
        if failed_rows is not None:
            self.rows_per_eval = max(1, failed_rows // 2)
        elif self.agg_mode:
            self.rows_per_eval = 1
        elif self.perturbations_per_eval != "auto":
            self.rows_per_eval = max(1, int(self.perturbations_per_eval) // self.samples_per_row)
        else:
            row_bytes = sum(x.numel() * x.element_size() for x in self.inputs) or 1
            device = self.inputs[0].device
            if device.type == "cuda":
                budget = int(torch.cuda.mem_get_info(device)[0] * AUTO_CUDA_FRACTION)
            else:
                budget = AUTO_CPU_BUDGET
            self.rows_per_eval = int(max(1, min(AUTO_MAX_ROWS, budget // row_bytes)))
        return self.rows_per_eval

    def _call_model(self, model_inputs: Tuple[Tensor, ...], rows: int) -> Tensor:
        """The only model call: ``rows`` perturbations of the ``N`` examples stacked on dim 0."""
        if rows not in self._expanded:
            args = self.additional_forward_args
            if rows > 1 and args is not None:
                args = _expand_additional_forward_args(args, rows)
            self._expanded[rows] = (self.target if rows == 1 else _expand_target(self.target, rows), args)
        target, args = self._expanded[rows]
        out = _as_output_tensor(_run_forward(self.forward_func, model_inputs, None, args))
        if target is not None:  # selected here, so a bad target fails with the output's shape in hand
            try:
                out = _select_targets(out, target)
            except (IndexError, RuntimeError) as err:
                raise AttributionInputError(
                    f"target {self.target!r} does not index forward_func's output: with {self.num_examples} "
                    f"examples it has shape {tuple(out.shape)} ({err})") from err
        self.num_model_calls += 1
        if self.progress is not None:
            self.progress.update()
        return out

    # ------------------------------------------------------------------ running rows

    def run_rows(self, rows: Tensor, previous_rows: Optional[Tensor] = None) -> Tensor:
        """One model call on a chunk of rows; returns the raw output. ``previous_rows`` (the
        previous chunk's rows, None for the first) is for incremental evaluators."""
        return self._call_model(self.perturber(rows, self.buffer), rows.shape[0])

    def initialize(self, rows: Optional[Tensor] = None) -> Tensor:
        """First model call: the unperturbed inputs (``rows`` None) or one row.

        Sets :attr:`row_shape`, :attr:`agg_mode` (one fixed-size output per batch) and the
        chunk size; returns the output (int/float outputs become 0-d tensors).
        """
        if rows is None:
            out = self._call_model(self.inputs, 1)
        else:
            out = self._own(self.run_rows(rows[:1]))
            self.release_buffers()
        self.row_shape = tuple(out.shape)
        self.agg_mode = out.dim() == 0 or (self.num_examples > 1 and out.numel() == 1)
        if self.agg_mode:
            if self.perturbations_per_eval not in (1, "auto"):
                raise AttributionInputError(
                    "perturbations_per_eval must be 1 when forward_func returns a scalar per batch, "
                    f"got {self.perturbations_per_eval}")
            if self.check_batch_output is not None:
                self.check_batch_output()
        self.chunk_size()
        self._record_nan(out, "the first evaluation")
        self._raise_on_nan()
        return out

    def run(self, num_rows: int, make_rows: Callable[[int, int], Tensor]) -> Tensor:
        """Outputs ``[R, *row_shape]`` of rows ``0 .. R - 1``, built chunk by chunk by
        ``make_rows(start, stop)``; in row order, on the model's output device (through the
        active :func:`row_runner`, if any)."""
        runner = _ROW_RUNNER.get()
        return self.run_local(num_rows, make_rows) if runner is None else runner(self, num_rows, make_rows)

    def run_local(self, num_rows: int, make_rows: Callable[[int, int], Tensor]) -> Tensor:
        """:meth:`run` in this process, ignoring any :func:`row_runner`."""
        if self.row_shape is None:
            raise RuntimeError("Evaluator.initialize() must be called before run")
        results: List[Tensor] = []
        start, previous = 0, None
        while start < num_rows:
            count = min(self.rows_per_eval, num_rows - start)
            rows = make_rows(start, start + count)
            try:
                out = self.run_rows(rows, previous)
            except torch.OutOfMemoryError:
                self.release_buffers()
                if self.perturbations_per_eval != "auto" or count == 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.chunk_size(failed_rows=count)
                continue
            results.append(self._check_chunk(self._own(out), count))
            previous, start = rows, start + count
        self.release_buffers()
        self._raise_on_nan()
        if not results:
            return torch.zeros((0,) + self.row_shape)
        return torch.cat(results) if len(results) > 1 else results[0]

    def _check_chunk(self, out: Tensor, rows: int) -> Tensor:
        expected = rows * math.prod(self.row_shape)
        grows = rows == 1 or (out.dim() >= 1 and len(self.row_shape) >= 1
                              and out.shape[0] == rows * self.row_shape[0])
        if not grows or out.numel() != expected:
            n = self.num_examples
            raise AttributionInputError(
                f"forward_func output must grow with the batch: with {n} examples it returned shape "
                f"{self.row_shape}, with {rows * n} examples ({rows} perturbations per evaluation) it "
                f"returned {tuple(out.shape)}; use perturbations_per_eval=1 for models that aggregate "
                f"the batch")
        self._record_nan(out, f"model call {self.num_model_calls}")
        return out.reshape((rows,) + self.row_shape)

    def _record_nan(self, out: Tensor, where: str) -> None:
        # Flags stay on the device; one sync per evaluate() call, not per chunk.
        if self.check_nan and out.is_floating_point():
            self._nan_flags.append((where, torch.isnan(out).any()))

    def _raise_on_nan(self) -> None:
        flags, self._nan_flags = self._nan_flags, []
        if not flags:
            return
        bad = torch.stack([f.to("cpu", non_blocking=False) for _, f in flags])
        if bool(bad.any()):
            where = flags[int(bad.nonzero()[0, 0])][0]
            raise AttributionInputError(
                f"forward_func returned NaN, first at {where} (model calls counted from 1, the first "
                f"being the unperturbed/reference evaluation)")

    # ------------------------------------------------------------------ buffers and progress

    def buffer(self, i: int, rows: int) -> Tensor:
        """A reusable ``[rows, *inputs[i].shape]`` buffer for the perturbed copies of input ``i``:
        one allocation per evaluation (grown when a chunk is larger) instead of a fresh,
        page-faulted tensor per model call; outputs aliasing it are cloned (:meth:`_own`)."""
        x = self.inputs[i]
        buffer = self._buffers.get(i)
        if buffer is None or buffer.shape[0] < rows:
            self._buffers.pop(i, None)  # free the old one before allocating the larger one
            buffer = torch.empty((rows,) + tuple(x.shape), dtype=x.dtype, device=x.device)
            self._buffers[i] = buffer
        return buffer[:rows]

    def release_buffers(self) -> None:
        self._buffers.clear()
        release = getattr(self.perturber, "release", None)
        if release is not None:
            release()

    def _own(self, out: Tensor) -> Tensor:
        """``out``, cloned when it views an input buffer (which the next chunk overwrites)."""
        if not self._buffers or out.numel() == 0:
            return out
        storage = out.untyped_storage().data_ptr()
        if any(b.untyped_storage().data_ptr() == storage for b in self._buffers.values()):
            return out.clone()
        return out

    @contextlib.contextmanager
    def progress_bar(self, show: bool, desc: str):
        """Captum's progress bar (same description), ticked once per model call while the block
        runs; its total is set with :meth:`set_progress_total`."""
        if not show:
            yield
            return
        self.progress = captum_progress(desc=desc, total=None)
        self.progress.update(0)
        try:
            yield
        finally:
            self.progress.close()

    def set_progress_total(self, model_calls: int) -> None:
        if self.progress is not None:
            self.progress.total = model_calls
