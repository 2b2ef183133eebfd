"""The :class:`~mmxai_fast.attr._evaluator.Evaluator`'s model-speed policies.

They apply to ``perturbations_per_eval="auto"`` and to every call made while a patch policy is
active (:func:`mmxai_fast.patch_captum` with settings, ``mmxai-fast run``); an int
``perturbations_per_eval`` without a patch calls the model exactly as Captum does.

- :class:`ModelCaller` (every model call): 5-D inputs in ``torch.channels_last_3d`` when chosen
  (the chunk buffer is converted once per call; 2x2x2 average pools keep that layout,
  :mod:`~mmxai_fast.attr._channels_last_pool`), ``torch.inference_mode`` (perturbation methods
  never differentiate the model; a model that fails under it is called without it, once said),
  oneDNN for the ``conv3d`` calls PyTorch would run on its slow batch-1 path
  (:mod:`~mmxai_fast.attr._onednn_conv`), opt-in autocast (its error against float32 on the first
  call reported), ``torch.compile`` and CUDA graphs; every call timed into the patch's
  :class:`~mmxai_fast.attr._model_policy.MethodStats`.
- :class:`ChunkPlanner` (rows per model call for ``"auto"``): the chunk grows 1, 2, 4, 8, ... on the
  attribution's own rows (no extra probe evaluations), within the memory cap, until two doublings
  in a row fail to raise the model's measured throughput by :data:`MIN_GAIN`; the chunk with the
  best throughput is kept (a larger one only when :data:`MIN_GAIN` faster; a model whose first
  call takes under :data:`FAST_CALL_S` goes straight to the cap), then one chunk in the other
  layout decides it (taken when :data:`MIN_LAYOUT_GAIN` faster; both layouts timed on a call that
  is not their first at that size, which pays one-time costs). On the CPU the ramp runs in
  ``channels_last_3d`` (oneDNN's native layout, where no convolution reorders its input) and the
  trial in the plain layout; elsewhere the other way round. On the CPU a call on volumes whose
  ``conv3d`` calls run on oneDNN at batch 1 does not explore with fewer than
  :data:`EXPLORE_MIN_ROWS` rows: it runs at the best chunk measured so far and leaves the ramp
  and the trial, unsettled, to a longer call (without oneDNN, PyTorch's batch-1 ``slow_conv3d``
  makes larger chunks worth trying at once). The first chunk of more than one row
  is checked for batch dependence (once per call: what depends on the batch, train-mode BatchNorm
  or layers that mix samples, shows at two rows): it carries the first evaluation's row (run
  alone at :meth:`Evaluator.initialize`) as its last row, whose batched output must equal the
  one alone to the dtype's tolerance; a model that fails (or is in train mode) goes row by row
  with one warning saying why, and the failing chunk is re-run row by row.
- Plan memory: what a ramp measured (chunk sizes, rates, the layout trial) is remembered for the
  rest of the process per model (weakly: it goes with the model) and input signature (shapes,
  dtypes, devices and the patch policy). The next attribution call on the same model and shape (the
  next method, the next case of a cohort) goes on from there: a settled plan is used at once (no
  ramp, no layout trial), a ramp that ran out of rows continues where it stopped. Each call's first
  chunk larger than one row is still checked for batch dependence.
"""
from __future__ import annotations

import contextlib
import copy
import time
import warnings
import weakref
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

from ._channels_last_pool import channels_last_pooling
from ._fold_batchnorm import fold_batchnorm
from ._model_policy import MethodStats, ModelPolicy
from ._onednn_conv import ConvCounter, onednn_conv3d

__all__ = ["ChunkPlanner", "ModelCaller", "close", "plan_key", "recall_plan", "remember_plan", "training_modules"]

#: A doubling of the chunk must raise measured throughput by this factor to be taken.
MIN_GAIN = 1.10
#: A first model call faster than this (seconds) skips the ramp: the chunk is the memory cap.
FAST_CALL_S = 0.01
#: The layout trial's layout must be this much faster than the ramp's to be taken.
MIN_LAYOUT_GAIN = 1.05
#: On the CPU a call on 5-D inputs (volumes; conv3d on oneDNN at batch 1, the ``onednn_conv``
#: policy) explores (ramp steps past batch 1, the layout trial) only with at least this many rows
#: left: about three times the rows the exploration itself spends (a ramp to 4 with its check row,
#: two trial calls), since there batch 1 is usually the fastest or close to it.
EXPLORE_MIN_ROWS = 24
_TOLERANCE = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-5),
              torch.bfloat16: (3e-2, 1e-2), torch.float16: (1e-2, 1e-3)}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}
#: model -> {input signature: the ChunkPlanner state it left (:meth:`ChunkPlanner.state`)}.
_PLANS: "weakref.WeakKeyDictionary[Any, Dict[tuple, Dict[str, Any]]]" = weakref.WeakKeyDictionary()


def plan_key(inputs: Tuple[Tensor, ...], policy: ModelPolicy) -> tuple:
    """The input signature a remembered plan is valid for."""
    return (policy,) + tuple((tuple(x.shape), x.dtype, str(x.device)) for x in inputs)


def recall_plan(model: Any, key: tuple) -> Optional[Dict[str, Any]]:
    """The planner state left for ``model`` and ``key`` earlier in this process, or None (also for
    callables that cannot be weakly referenced or hashed)."""
    try:
        return _PLANS.get(model, {}).get(key)
    except TypeError:
        return None


def remember_plan(model: Any, key: tuple, state: Dict[str, Any]) -> None:
    try:
        _PLANS.setdefault(model, {})[key] = state
    except TypeError:
        pass


def close(a: Tensor, b: Tensor) -> bool:
    """Equal to the float tolerance of ``a``'s dtype (atol scaled by ``max |b|``)."""
    rtol, atol = _TOLERANCE.get(a.dtype, (1e-4, 1e-5))
    scale = float(b.detach().abs().max()) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol * max(1.0, scale))


def training_modules(forward_func: Callable) -> List[str]:
    """Names of the BatchNorm/Dropout layers behind ``forward_func`` that are in train mode (their
    outputs depend on the batch or on the random stream, so batching would change the results)."""
    owner = forward_func if isinstance(forward_func, torch.nn.Module) else getattr(forward_func, "__self__", None)
    if not isinstance(owner, torch.nn.Module):
        return []
    batch_dependent = (torch.nn.modules.batchnorm._BatchNorm, torch.nn.modules.dropout._DropoutNd)
    return [type(m).__name__ for m in owner.modules() if m.training and isinstance(m, batch_dependent)]


class ModelCaller:
    """``forward_func`` under a :class:`ModelPolicy` (module docstring); called like the model."""

    def __init__(self, forward_func: Callable, policy: ModelPolicy, stats: Optional[MethodStats],
                 note: Callable[..., None]) -> None:
        self.forward_func = forward_func
        self.policy = policy
        self.stats = stats
        self.note = note
        self._layout_failed = False  # the model failed on channels_last_3d: never tried again
        self.channels_last = policy.channels_last is True
        self.inference_mode = policy.inference_mode
        self.seconds = 0.0  # model time of the last call
        self._autocast_checked = False
        self._conv_counter: Optional[ConvCounter] = ConvCounter()
        self.onednn = False if policy.compile else policy.onednn_conv
        self._graphs: Dict[Tuple, Any] = {}
        self._model: Callable = forward_func
        if policy.fold_batchnorm and not policy.compile:  # Inductor folds by itself
            folded, why = fold_batchnorm(forward_func, self.onednn)
            if folded is not None:
                self._model = folded
                note(f"fold_batchnorm: {why}")
        if policy.compile:
            self._model = self._compile()

    @property
    def channels_last(self) -> bool:
        """Whether 5-D inputs go to the model in ``torch.channels_last_3d``."""
        return self._channels_last

    @channels_last.setter
    def channels_last(self, value: bool) -> None:
        self._channels_last = bool(value) and not self._layout_failed

    def use_model(self, forward: Callable) -> Callable:
        """Call ``forward`` (an incremental runner standing in for the model) under the same policies;
        returns the model it replaces (folded or compiled), for ``forward``'s dense calls."""
        previous, self.forward_func, self._model = self._model, forward, forward
        return previous

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        out = self.raw(args, kwargs, self.policy.autocast)
        if self.policy.autocast and not self._autocast_checked:
            self._autocast_checked = True
            exact = self.raw(args, kwargs, None)
            if isinstance(out, Tensor) and isinstance(exact, Tensor) and exact.numel():
                err = float((out.double() - exact.double()).abs().max())
                scale = float(exact.double().abs().max()) or 1.0
                self.note(f"autocast={self.policy.autocast}: max abs error {err:.3g} ({err / scale:.3g} relative) "
                          f"against float32 on the first chunk")
        return out

    def raw(self, args: Tuple, kwargs: Dict, autocast: Optional[str]) -> Any:
        """One timed model call with the layout, inference-mode and autocast settings."""
        call_args = args
        if self.channels_last:
            call_args = tuple(a.contiguous(memory_format=torch.channels_last_3d)
                              if isinstance(a, Tensor) and a.dim() == 5 else a for a in args)
        dtype = _AUTOCAST.get(autocast) if autocast else None
        device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
        start = time.perf_counter()
        try:
            # inference_mode(False) would switch gradients back on inside the caller's no_grad: not entered
            grad_mode = torch.inference_mode() if self.inference_mode else contextlib.nullcontext()
            with grad_mode, onednn_conv3d(self.onednn, self._conv_counter), \
                    channels_last_pooling(self.channels_last), \
                    torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                out = (self._graph_call(call_args, kwargs) if self.policy.cuda_graphs
                       else self._model(*call_args, **kwargs))
        except RuntimeError as err:  # retried once without the failing setting; a second failure raises
            if self.inference_mode:
                self.inference_mode = False
                self.note(f"inference_mode not used: the model failed under it ({err})")
            elif self.channels_last and self.policy.channels_last == "auto":
                self._layout_failed, self.channels_last = True, False
                self.note(f"channels_last_3d not used: the model failed on it ({err})")
            else:
                raise
            return self.raw(args, kwargs, autocast)
        self.seconds = time.perf_counter() - start
        if self._conv_counter is not None:  # said once, after the first call
            counted, self._conv_counter = self._conv_counter, None
            if counted.rerouted:
                self.note(f"oneDNN conv3d: {counted.rerouted} of {counted.total} conv3d calls per model call run on "
                          f"oneDNN instead of PyTorch's slow batch-1 path")
        if self.stats is not None:
            self.stats.model_s += self.seconds
            self.stats.model_calls += 1
        if isinstance(out, Tensor) and out.is_inference():
            out = out.clone()  # inference tensors cannot be modified in place outside inference mode
        return out.float() if autocast and isinstance(out, Tensor) and out.is_floating_point() else out

    def _compile(self) -> Callable:
        try:
            return torch.compile(self._model, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly, say why
            self.note(f"compile=True not used: {type(exc).__name__}: {exc}")
            return self._model

    def _graph_call(self, args: Tuple, kwargs: Dict) -> Any:
        tensors = [a for a in args if isinstance(a, Tensor)]
        if kwargs or not tensors or len(tensors) != len(args) or tensors[0].device.type != "cuda":
            self.note("cuda_graphs=True not used: needs CUDA tensor inputs and no keyword arguments")
            return self._model(*args, **kwargs)
        key = tuple((a.shape, a.dtype, a.device) for a in tensors)
        if key not in self._graphs:
            static_in = [a.clone() for a in tensors]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._model(*static_in)  # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._model(*static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()


class ChunkPlanner:
    """Rows per model call (module docstring): a ramp for ``"auto"``, else a fixed size.

    Args:
        cap: the most rows per call (the memory budget, or the caller's int).
        ramp: grow the chunk by measured throughput (``"auto"``); False: always ``cap``.
        layout_trial: measure the other layout once the ramp settles (5-D inputs, ``"auto"``).
        caller: the :class:`ModelCaller` whose layout the trial sets.
        recalled: the state an earlier planner left for the same model and inputs
            (:func:`recall_plan`): settled, it is used as it is (no ramp, no trial); else the ramp
            or trial goes on from it.
        remember: called with :meth:`state` when the plan settles and by :meth:`save`.
        base_channels_last: the ramp's layout under a layout trial (channels_last_3d on the CPU).
        explore_min_rows: a call with fewer rows left at its first chunk does not explore (no ramp
            step past the best size measured, no layout trial) and leaves the plan unsettled for
            the next call (:data:`EXPLORE_MIN_ROWS` for CPU volumes on oneDNN; 0: always explore).
    """

    def __init__(self, cap: int, ramp: bool, layout_trial: bool, caller: ModelCaller,
                 recalled: Optional[Dict[str, Any]] = None,
                 remember: Optional[Callable[[Dict[str, Any]], None]] = None,
                 base_channels_last: bool = False, explore_min_rows: int = 0) -> None:
        self.cap = max(1, cap)
        self.auto = ramp
        self.ramp = ramp and self.cap > 1
        self.layout_trial = layout_trial
        self.caller = caller
        # The ramp starts with one more row alone: the first call's rate paid one-time costs, and on a
        # CPU a batch-1 call can be the fastest per row (oneDNN batch-1 convolutions).
        self.size = 1 if self.ramp else self.cap
        self.rates: Dict[int, float] = {}
        self.checked = False  # the batch-dependence check ran
        self.trial: Optional[int] = None  # chunk size of the layout trial in progress
        self.trial_calls = 0
        self.base = base_channels_last if layout_trial else caller.channels_last  # the ramp's layout
        self.initial_layout = caller.channels_last  # the reference call's (made before the planner)
        if layout_trial:
            caller.channels_last = self.base
        self.plain_calls: Dict[int, int] = {}  # calls per size in the ramp's layout
        self.steady: Dict[int, float] = {}  # the ramp layout's throughput per size, first call at a size excluded
        self.batch_dependent = False
        self.summary: Optional[str] = None
        self.used = 0  # the most new rows of one call so far
        self.remember = remember
        self.explore_min_rows = explore_min_rows
        self.explore: Optional[bool] = None  # this call explores: decided at its first chunk
        if recalled is not None and self.ramp:
            self._resume(recalled)

    _MEASURED = ("size", "ramp", "layout_trial", "trial", "trial_calls", "rates", "steady", "plain_calls")

    def state(self) -> Dict[str, Any]:
        """What this planner measured and decided, for :func:`remember_plan`."""
        state = {name: copy.copy(getattr(self, name)) for name in self._MEASURED}
        state.update(channels_last=bool(self.caller.channels_last), settled=not (self.ramp or self.layout_trial))
        return state

    def save(self) -> None:
        """Leave the state for the next call on the same model and inputs (a ramp that ran out of rows)."""
        if self.remember is not None and self.auto and not self.batch_dependent:
            self.remember(self.state())

    def _resume(self, state: Dict[str, Any]) -> None:
        layout_trial = self.layout_trial
        if state["settled"]:
            self.size, self.ramp, self.layout_trial = min(state["size"], self.cap), False, False
            self.summary = (f"batch=auto: perturbations_per_eval={self.size} (measured for this model and input "
                            f"shape earlier in this process; channels_last_3d "
                            f"{'on' if state['channels_last'] else 'off'})")
        else:
            for name in self._MEASURED:
                setattr(self, name, copy.copy(state[name]))
            self.size = min(self.size, self.cap)
        if layout_trial:
            self.caller.channels_last = state["channels_last"]

    def next_chunk(self, remaining: int) -> Tuple[int, bool]:
        """(new rows of the next chunk, whether it carries the check row)."""
        if self.explore is None:
            self.explore = remaining >= self.explore_min_rows
        size = self.size if self.explore or not self.ramp else self._best()
        check = size > 1 and not self.checked
        count = min(size - 1 if check else size, remaining)
        self.used = max(self.used, count)
        if check:
            self.checked = True
        if self.explore and self.layout_trial and not self.ramp and count == self.size and not check \
                and self.size in self.steady:
            if self.trial is None:
                self.trial, self.trial_calls = self.size, 0
            self.caller.channels_last = not self.base
        return count, check

    def record(self, model_rows: int, seconds: float, first: bool = False) -> None:
        """Throughput of a call of ``model_rows`` rows (``first``: the initial, one-row call)."""
        rate = model_rows / max(seconds, 1e-9)
        if self.trial is None and self.caller.channels_last == self.base and (self.initial_layout == self.base
                                                                              or not first):
            # The first call at a size pays one-time costs (allocation, kernel selection): not steady.
            self.plain_calls[model_rows] = self.plain_calls.get(model_rows, 0) + 1
            if self.plain_calls[model_rows] >= 2:
                self.steady[model_rows] = rate
        if first:
            self.rates.setdefault(1, rate)  # a resumed ramp keeps its steady rate
            if self.ramp and seconds < FAST_CALL_S:  # per-call overhead dominates: no ramp, no trial
                if self.layout_trial:  # an unmeasured layout is not kept
                    self.caller.channels_last = self.initial_layout
                self.ramp, self.layout_trial, self.size = False, False, self.cap
            return
        if self.trial is not None:
            self.trial_calls += model_rows == self.trial
            if model_rows != self.trial or self.trial_calls < 2:
                return  # the first call in the new layout pays its own one-time costs
            self.trial, self.layout_trial = None, False
            trial_wins = rate >= self.steady[model_rows] * MIN_LAYOUT_GAIN
            self.caller.channels_last = self.base != trial_wins
            self._settled()
            return
        if not self.ramp or model_rows != self.size or (model_rows > 1 and not self.explore):
            return
        if model_rows == 1 and self.plain_calls.get(1, 0) < 2:
            return  # batch 1 is judged on a steady call (the reference ran in the other layout)
        self.rates[model_rows] = rate
        best = self._best()
        if best * 2 >= self.size and self.size * 2 <= self.cap:  # stop after two doublings without a gain
            self.size *= 2
            return
        self.size, self.ramp = best, False
        if not self.layout_trial:
            self._settled()

    def set_cap(self, cap: int, shrink_only: bool = False) -> None:
        """A new most rows per call (``shrink_only``: after running out of memory; the ramp ends)."""
        self.cap = max(1, cap)
        if shrink_only:
            self.ramp = False
        if not self.ramp and not self.batch_dependent:
            self.size = self.cap if not (shrink_only or self.auto) else min(self.size, self.cap)
        self.size = min(self.size, self.cap)

    def row_by_row(self, reason: str) -> str:
        self.batch_dependent, self.ramp, self.layout_trial, self.size = True, False, False, 1
        self.summary = f"{'batch=auto ' if self.auto else ''}kept perturbations_per_eval=1: {reason}"
        return self.summary

    def _best(self) -> int:
        """The measured size of best throughput (a larger one only when :data:`MIN_GAIN` faster)."""
        best = 1
        for size in sorted(self.rates):
            if self.rates[size] >= self.rates.get(best, 0.0) * MIN_GAIN:
                best = size
        return best

    def _settled(self) -> None:
        self._summarize()
        self.save()

    def _summarize(self) -> None:
        size = self._best() if self.ramp else self.size
        best = min(size, max(1, self.used))  # the rows ran out before a full chunk: the largest one used
        rate = self.rates.get(size, self.steady.get(size, 0.0))
        left = "" if self.explore is not False or not (self.ramp or self.layout_trial) else (
            f"; larger chunks and the other layout left for a call of at least {self.explore_min_rows} rows")
        self.summary = (f"batch=auto: perturbations_per_eval={best} (measured {rate:.1f} "
                        f"evaluations/s against {self.rates.get(1, 0.0):.1f} at 1; channels_last_3d "
                        f"{'on' if self.caller.channels_last else 'off'}{left})")

    def final_summary(self) -> str:
        """The note on the chosen chunk (also when the rows ran out before the ramp settled)."""
        if self.summary is None:
            self._summarize()
        return str(self.summary)


def warn(text: str) -> None:
    warnings.warn(f"mmxai_fast: {text}", RuntimeWarning, stacklevel=4)
