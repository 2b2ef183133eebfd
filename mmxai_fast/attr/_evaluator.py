"""The :class:`Evaluator`: the one place where the model is run.

An attribution method chooses **rows** (coalition rows ``keep [R, F]``, window ids ``[R]``,
...); a **perturber** (:mod:`mmxai_fast.attr._perturbers`) turns a chunk of rows into the
model's inputs; the evaluator does everything else about running the model:

- chunking: :meth:`Evaluator.chunk_size` rows per model call (``perturbations_per_eval``, or
  for ``"auto"`` a memory budget within which the chunk grows by measured throughput), halved
  and retried on ``torch.OutOfMemoryError``;
- Captum's expansion of ``target`` and ``additional_forward_args`` per chunk size
  (``_expand_target``, ``_expand_additional_forward_args``), cached;
- output checks: the first call fixes the per-row output shape, later chunks must return
  ``rows`` times as many leading entries; NaN outputs raise naming the first model call;
- the progress bar (one tick per model call) and reused input buffers (:meth:`Evaluator.buffer`).

Every model call goes through :meth:`Evaluator._call_model` and every chunk-size decision through
:meth:`Evaluator.chunk_size` and the :class:`~mmxai_fast.attr._evaluator_policy.ChunkPlanner`:
the model-speed policies (a chunk grown by measured throughput with a batch-dependence check,
``channels_last_3d`` where faster, ``inference_mode``, opt-in autocast/compile/CUDA graphs) live in
:mod:`mmxai_fast.attr._evaluator_policy` and apply to ``perturbations_per_eval="auto"`` and while
a patch policy is active (:func:`~mmxai_fast.attr._model_policy.active_session`).
:meth:`Evaluator.run_rows` ``(rows, previous_rows)`` is the seam for incremental inference: it
sees the rows of the chunk and those of the previous chunk (None for the first); this dense
evaluator ignores ``previous_rows``.
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

from .._validation import is_int
from ._errors import AttributionInputError
from . import _evaluator_policy
from ._evaluator_policy import (ChunkPlanner, ModelCaller, close, plan_key, recall_plan, remember_plan,
                                training_modules, warn)
from ._model_policy import ModelPolicy, active_session

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
#: The throughput ramp stops at this many rows on CPU (activations, not inputs, fill the memory there).
AUTO_CPU_RAMP_ROWS = 32

#: ``perturber(rows, buffer) -> model inputs``; ``buffer(i, rows)`` is :meth:`Evaluator.buffer`
#: on the model-call path and None elsewhere (then the perturber allocates).
Perturber = Callable[[Tensor, Optional[Callable[[int, int], Tensor]]], Tuple[Tensor, ...]]


def check_perturbations_per_eval(value: Any) -> Union[int, str]:
    """``perturbations_per_eval`` must be an int >= 1 or ``"auto"``."""
    if value == "auto" and isinstance(value, str):
        return value
    if not is_int(value) or value < 1:
        raise AttributionInputError(f"perturbations_per_eval must be an int >= 1 or 'auto', got {value!r}")
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
        self.row_cap: Optional[int] = None  # the most rows per call an incremental strategy can hold
        #: Samples one row carries (Lime: one per example); an int ``perturbations_per_eval``
        #: counts samples, so a call holds ``perturbations_per_eval // samples_per_row`` rows.
        self.samples_per_row = 1
        self.num_model_calls = 0
        self._expanded: Dict[int, Tuple[Any, Any]] = {}
        self._buffers: Dict[int, Tensor] = {}
        self._nan_flags: List[Tuple[str, Tensor]] = []
        session = active_session()
        self.policy = session[0] if session is not None else ModelPolicy()
        self.stats = session[1] if session is not None else None
        #: Notes on the speed policies (chunk chosen, layout, fallbacks), also in the patch's report.
        self.notes: List[str] = []
        self.caller: Optional[ModelCaller] = None
        if session is not None or self.perturbations_per_eval == "auto":
            self.caller = ModelCaller(forward_func, self.policy, self.stats, self._note)
        self.planner: Optional[ChunkPlanner] = None
        self._plan_owner = forward_func  # the caller's model: plans are remembered per model, not per wrapper
        self._reference: Optional[Tuple[Tuple[Tensor, ...], Tensor]] = None  # the first call's (inputs, output)

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
        if self.row_cap is not None:
            self.rows_per_eval = min(self.rows_per_eval, self.row_cap)
        if self.planner is not None:
            self.planner.set_cap(self._planner_cap(), shrink_only=failed_rows is not None)
        return self.rows_per_eval

    def _call_model(self, model_inputs: Tuple[Tensor, ...], rows: int, counted: Optional[int] = None) -> Tensor:
        """The only model call: ``rows`` perturbations of the ``N`` examples stacked on dim 0
        (``counted`` of them new evaluations, default all; the others are checks)."""
        if rows not in self._expanded:
            args = self.additional_forward_args
            if rows > 1 and args is not None:
                args = _expand_additional_forward_args(args, rows)
            self._expanded[rows] = (self.target if rows == 1 else _expand_target(self.target, rows), args)
        target, args = self._expanded[rows]
        model = self.forward_func if self.caller is None else self.caller
        out = _as_output_tensor(_run_forward(model, model_inputs, None, args))
        if target is not None:  # selected here, so a bad target fails with the output's shape in hand
            try:
                out = _select_targets(out, target)
            except (IndexError, RuntimeError) as err:
                raise AttributionInputError(
                    f"target {self.target!r} does not index forward_func's output: with {self.num_examples} "
                    f"examples it has shape {tuple(out.shape)} ({err})") from err
        self.num_model_calls += 1
        if self.stats is not None:
            self.stats.evaluations += rows if counted is None else counted
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
        dense = "run_rows" not in vars(self)  # not swapped for incremental inference
        model_inputs: Optional[Tuple[Tensor, ...]] = self.inputs
        if rows is None:
            out = self._call_model(self.inputs, 1)
        elif dense and self.caller is not None:
            model_inputs = self.perturber(rows[:1], None)  # freshly allocated: kept for the batch checks
            out = self._call_model(model_inputs, 1)
        else:
            model_inputs = None
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
        if self.caller is not None and dense and model_inputs is not None and not self.agg_mode:
            self._plan(model_inputs, out)
        self._record_nan(out, "the first evaluation")
        self._raise_on_nan()
        return out

    def _plan(self, model_inputs: Tuple[Tensor, ...], out: Tensor) -> None:
        assert self.caller is not None and self.rows_per_eval is not None
        auto = self.perturbations_per_eval == "auto"
        layout_trial = auto and self.policy.channels_last == "auto" and any(x.dim() == 5 for x in self.inputs)
        key = plan_key(self.inputs, self.policy)
        model, cpu = self._plan_owner, self.inputs[0].device.type == "cpu"
        # Batch 1 is near the best only for volumes whose convolutions run on oneDNN at batch 1.
        explore_min_rows = _evaluator_policy.EXPLORE_MIN_ROWS if (
            cpu and any(x.dim() == 5 for x in self.inputs) and self.caller.onednn is not False) else 0
        self.planner = ChunkPlanner(self._planner_cap(), auto, layout_trial, self.caller,
                                    recalled=recall_plan(model, key) if auto else None,
                                    remember=lambda state: remember_plan(model, key, state),
                                    base_channels_last=cpu,
                                    explore_min_rows=explore_min_rows)
        self.planner.record(1, self.caller.seconds, first=True)
        self._reference = (model_inputs, out)
        training = training_modules(self.forward_func) if auto else []
        if training:
            self._note(self.planner.row_by_row(
                f"the model is in train mode and its {training[0]} outputs depend on the batch"), warn_user=True)

    def _planner_cap(self) -> int:
        assert self.rows_per_eval is not None
        if self.perturbations_per_eval == "auto" and self.inputs[0].device.type == "cpu":
            return min(self.rows_per_eval, AUTO_CPU_RAMP_ROWS)
        return self.rows_per_eval

    def run(self, num_rows: int, make_rows: Callable[[int, int], Tensor]) -> Tensor:
        """Outputs ``[R, *row_shape]`` of rows ``0 .. R - 1``, built chunk by chunk by
        ``make_rows(start, stop)``; in row order, on the model's output device (through the
        active :func:`row_runner`, if any)."""
        runner = _ROW_RUNNER.get()
        return self.run_local(num_rows, make_rows) if runner is None else runner(self, num_rows, make_rows)

    def run_local(self, num_rows: int, make_rows: Callable[[int, int], Tensor]) -> Tensor:
        """:meth:`run` in this process, ignoring any :func:`row_runner`."""
        if self.row_shape is None or self.rows_per_eval is None:
            raise RuntimeError("Evaluator.initialize() must be called before run")
        planner = self.planner if "run_rows" not in vars(self) else None
        results: List[Tensor] = []
        start, previous = 0, None
        while start < num_rows:
            count, check = planner.next_chunk(num_rows - start) if planner else (
                min(self.rows_per_eval, num_rows - start), False)
            rows = make_rows(start, start + count)
            try:
                out = self._run_checked(rows) if check else self.run_rows(rows, previous)
            except torch.OutOfMemoryError:
                self.release_buffers()
                if self.perturbations_per_eval != "auto" or count + check <= 1:
                    raise
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                self.chunk_size(failed_rows=count + check)
                continue
            if planner is not None and not check and self.caller is not None:
                planner.record(count, self.caller.seconds)
            results.append(self._check_chunk(self._own(out), count))
            previous, start = rows, start + count
        self.release_buffers()
        self._raise_on_nan()
        if planner is not None:
            planner.save()
        if planner is not None and planner.auto and planner.final_summary() not in self.notes[-1:]:
            self._note(planner.final_summary())
        if not results:
            return torch.zeros((0,) + self.row_shape)
        return torch.cat(results) if len(results) > 1 else results[0]

    def _run_checked(self, rows: Tensor) -> Tensor:
        """A chunk that carries the first evaluation's row last; its batched output must match
        the one alone, else the model depends on the batch and the chunk is re-run row by row."""
        assert self._reference is not None and self.planner is not None and self.row_shape is not None
        ref_inputs, ref_out = self._reference
        count, n = rows.shape[0], self.num_examples
        inputs = self.perturber(rows, self.buffer)
        out = self._call_model(tuple(torch.cat([x, r]) for x, r in zip(inputs, ref_inputs)), count + 1, count)
        self.planner.record(count + 1, self.caller.seconds if self.caller else 1.0)
        lead = self.row_shape[0] if self.row_shape else 1
        if out.dim() < 1 or out.shape[0] != (count + 1) * lead:
            self._check_chunk(out, count + 1)  # raises: the output does not grow with the batch
        if close(out[count * lead:].reshape(ref_out.shape), ref_out):
            return out[:count * lead]
        reason = (f"a batch of two different rows gave other outputs than the rows alone (row-by-row check of "
                  f"the first batched chunk of {count + 1} perturbations): the model's outputs depend on the batch")
        self._note(self.planner.row_by_row(reason), warn_user=True)
        return torch.cat([self._own(self._call_model(tuple(x[i * n:(i + 1) * n] for x in inputs), 1, 0))
                          for i in range(count)])

    def _note(self, text: str, warn_user: bool = False) -> None:
        self.notes.append(text)
        if self.stats is not None:
            self.stats.notes.append(text)
        if warn_user:
            warn(text)

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
