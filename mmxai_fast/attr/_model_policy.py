"""How the model is run for the perturbation classes: batching, memory layout, inference mode.

A :class:`ModelRunner` stands in for an attribution object's ``forward_func`` during one
``attribute`` call (installed by :func:`mmxai_fast.patch_captum` and ``mmxai-fast run``) and
applies the :class:`ModelPolicy`:

- ``batch="auto"``: a caller's ``perturbations_per_eval=1`` becomes a chunk size chosen by
  measured throughput (model inputs per second for chunks of 1, 2, 4, ... perturbations, within a
  memory budget, stopping once a doubling gains under 10%). Only when the model is in eval mode
  and its outputs do not depend on the batch: a probe compares a batch of two different rows with
  the rows run alone, and the first batched chunk of the attribution is checked against
  row-by-row evaluation of the same rows; a model that fails either keeps batch 1 (one warning
  saying why, and the failing chunk's row-by-row outputs are the ones used).
- ``channels_last="auto"``: 5-D inputs go to the model in ``torch.channels_last_3d`` when that is
  measured faster (and gives the same outputs to the dtype's tolerance).
- ``inference_mode=True``: model calls run under :func:`torch.inference_mode` (perturbation
  methods never differentiate the model); outputs are cloned out of it.
- Opt-in: ``autocast="bf16"|"fp16"`` (error against float32 on the first chunk reported),
  ``compile=True`` (``torch.compile`` of the model), ``cuda_graphs=True`` (replay of one captured
  graph per fixed chunk shape on CUDA). Each reports its measured gain or why it was not used.

Every call is timed; :data:`REPORT` collects per attribution class: calls, model evaluations
(perturbed copies of the input), model calls, time in the model and wall time.
"""
from __future__ import annotations

import dataclasses
import time
import warnings
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import Tensor

__all__ = ["CALLS", "ModelPolicy", "ModelRunner", "REPORT", "format_calls", "format_report", "reset_report"]

#: Bytes of perturbed inputs per model call that ``batch="auto"`` may use (CPU; on CUDA an eighth
#: of the free memory).
CPU_BATCH_BUDGET = 256 * 2**20
MAX_PROBE_PERTURBATIONS = 64
#: A doubling of the chunk must raise throughput by this factor to be taken.
MIN_GAIN = 1.10
_TOLERANCE = {torch.float64: (1e-7, 1e-9), torch.float32: (1e-4, 1e-5),
              torch.bfloat16: (3e-2, 1e-2), torch.float16: (1e-2, 1e-3)}
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """Settings of :class:`ModelRunner` (see the module docstring)."""

    batch: Optional[str] = None          # "auto" | "keep" | None (keep the caller's value)
    channels_last: Any = "auto"          # "auto" | True | False
    inference_mode: bool = True
    autocast: Optional[str] = None       # None | "bf16" | "fp16"
    compile: bool = False
    cuda_graphs: bool = False

    def __post_init__(self) -> None:
        checks = [("batch", self.batch, (None, "auto", "keep")),
                  ("channels_last", self.channels_last, ("auto", True, False)),
                  ("autocast", self.autocast, (None, "bf16", "fp16"))]
        for name, value, allowed in checks:
            if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("inference_mode", "compile", "cuda_graphs"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be a bool, got {getattr(self, name)!r}")


@dataclasses.dataclass
class MethodStats:
    calls: int = 0
    evaluations: int = 0
    model_calls: int = 0
    model_s: float = 0.0
    wall_s: float = 0.0
    notes: List[str] = dataclasses.field(default_factory=list)


REPORT: Dict[str, MethodStats] = defaultdict(MethodStats)
#: One entry per attribute call: (class name, wall s, model s, model evaluations).
CALLS: List[Tuple[str, float, float, int]] = []


def reset_report() -> None:
    REPORT.clear()
    CALLS.clear()


def format_calls() -> str:
    """Per attribution call: wall time, time in the model and the engine's share."""
    lines = ["mmxai-fast profile: per attribution call"]
    for i, (name, wall, model, evaluations) in enumerate(CALLS, 1):
        engine = max(0.0, wall - model)
        lines.append(f"  #{i} {name}: {wall:.3f} s, model {model:.3f} s ({100 * model / wall if wall else 0:.0f}%), "
                     f"engine {engine:.3f} s, {evaluations} evaluations ({evaluations / wall if wall else 0:.1f}/s)")
    return "\n".join(lines)


def format_report() -> str:
    """The ``--report`` table: one line per attribution class."""
    lines = ["mmxai-fast report: method, calls, model evaluations, model calls, time in model, engine time"]
    for name, s in sorted(REPORT.items()):
        engine = max(0.0, s.wall_s - s.model_s)
        share = 100.0 * s.model_s / s.wall_s if s.wall_s else 0.0
        lines.append(f"  {name}: {s.calls} calls, {s.evaluations} evaluations, {s.model_calls} model calls, "
                     f"model {s.model_s:.3f} s ({share:.0f}% of {s.wall_s:.3f} s), engine {engine:.3f} s")
        lines += [f"    {note}" for note in dict.fromkeys(s.notes)]
    return "\n".join(lines)


def _modules_of(forward_func: Callable) -> List[torch.nn.Module]:
    if isinstance(forward_func, torch.nn.Module):
        return [forward_func]
    owner = getattr(forward_func, "__self__", None)
    return [owner] if isinstance(owner, torch.nn.Module) else []


def _leading(out: Any) -> Optional[int]:
    return out.shape[0] if isinstance(out, Tensor) and out.dim() > 0 else None


def _close(a: Tensor, b: Tensor) -> bool:
    rtol, atol = _TOLERANCE.get(a.dtype, (1e-4, 1e-5))
    scale = float(b.detach().abs().max()) if b.numel() else 1.0
    return a.shape == b.shape and torch.allclose(a.float(), b.float(), rtol=rtol, atol=atol * max(1.0, scale))


def _cat_rows(parts: List[Tensor]) -> Tensor:
    return torch.cat(parts) if len(parts) > 1 else parts[0]


class ModelRunner:
    """``forward_func`` under a :class:`ModelPolicy` for one attribution call (see module docstring).

    Args:
        forward_func: the user's model or function.
        policy: the settings.
        stats: where calls and model time are counted.
        num_examples: ``N``, rows of the caller's input (one perturbation is ``N`` model rows).
    """

    def __init__(self, forward_func: Callable, policy: ModelPolicy, stats: MethodStats, num_examples: int) -> None:
        self.forward_func = forward_func
        self.policy = policy
        self.stats = stats
        self.num_examples = num_examples
        self.channels_last = policy.channels_last is True
        self.row_by_row = False       # set when the model's outputs depend on the batch
        self._checked_batch = False
        self._autocast_checked = False
        self._compiled: Optional[Callable] = None
        self._graphs: Dict[Tuple, Any] = {}
        if policy.compile:
            self._compiled = self._compile()

    # ------------------------------------------------------------------ model calls

    def _model(self) -> Callable:
        return self._compiled or self.forward_func

    def _prepare(self, args: Tuple) -> Tuple:
        if not self.channels_last:
            return args
        return tuple(a.contiguous(memory_format=torch.channels_last_3d) if isinstance(a, Tensor) and a.dim() == 5
                     else a for a in args)

    def raw(self, *args: Any, autocast: Optional[str] = None, **kwargs: Any) -> Any:
        """One timed model call with the layout, inference-mode and autocast settings."""
        args = self._prepare(args)
        start = time.perf_counter()
        with torch.inference_mode(self.policy.inference_mode):
            dtype = _AUTOCAST.get(autocast) if autocast else None
            device = next((a.device.type for a in args if isinstance(a, Tensor)), "cpu")
            with torch.autocast(device, dtype=dtype, enabled=dtype is not None):
                out = self._graph_call(args, kwargs) if self.policy.cuda_graphs else self._model()(*args, **kwargs)
        self.stats.model_s += time.perf_counter() - start
        self.stats.model_calls += 1
        if self.policy.inference_mode and isinstance(out, Tensor):
            out = out.clone()  # inference tensors cannot be modified in place outside inference mode
        return out.float() if autocast and isinstance(out, Tensor) and out.is_floating_point() else out

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        rows = next((a.shape[0] for a in args if isinstance(a, Tensor) and a.dim() > 0), self.num_examples)
        self.stats.evaluations += max(1, rows // max(1, self.num_examples))
        n = self.num_examples
        if self.row_by_row and rows > n and rows % n == 0:
            return self._split_call(args, kwargs, rows)
        out = self.raw(*args, autocast=self.policy.autocast, **kwargs)
        if self.policy.autocast and not self._autocast_checked:
            self._autocast_checked = True
            self._report_autocast_error(args, kwargs, out)
        if not self._checked_batch and rows > n and rows % n == 0 and _leading(out) == rows:
            self._checked_batch = True
            by_row = self._split_call(args, kwargs, rows)
            if not _close(out, by_row):
                self.row_by_row = True
                self._note("batched outputs differ from row-by-row outputs of the same rows: "
                           "the model depends on the batch; kept batch 1", warn=True)
                return by_row
        return out

    def _split_call(self, args: Tuple, kwargs: Dict, rows: int) -> Tensor:
        n = self.num_examples
        parts = []
        for start in range(0, rows, n):
            piece = tuple(a[start:start + n] if isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == rows else a
                          for a in args)
            parts.append(self.raw(*piece, autocast=self.policy.autocast, **kwargs))
        return _cat_rows(parts)

    def _report_autocast_error(self, args: Tuple, kwargs: Dict, out: Any) -> None:
        exact = self.raw(*args, **kwargs)
        if isinstance(out, Tensor) and isinstance(exact, Tensor) and exact.numel():
            err = float((out.double() - exact.double()).abs().max())
            scale = float(exact.double().abs().max()) or 1.0
            self._note(f"autocast={self.policy.autocast}: max abs error {err:.3g} "
                       f"({err / scale:.3g} relative) against float32 on the first chunk")

    def _compile(self) -> Optional[Callable]:
        try:
            return torch.compile(self.forward_func, dynamic=False)
        except Exception as exc:  # noqa: BLE001 - any failure means: run eagerly, say why
            self._note(f"compile=True not used: {type(exc).__name__}: {exc}")
            return None

    def _graph_call(self, args: Tuple, kwargs: Dict) -> Any:
        tensors = [a for a in args if isinstance(a, Tensor)]
        if kwargs or not tensors or len(tensors) != len(args) or tensors[0].device.type != "cuda":
            self._note("cuda_graphs=True not used: needs CUDA tensor inputs and no keyword arguments")
            return self._model()(*args, **kwargs)
        key = tuple((a.shape, a.dtype, a.device) for a in tensors)
        if key not in self._graphs:
            static_in = [a.clone() for a in tensors]
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._model()(*static_in)  # warm-up outside the capture
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                static_out = self._model()(*static_in)
            self._graphs[key] = (graph, static_in, static_out)
        graph, static_in, static_out = self._graphs[key]
        for dst, src in zip(static_in, tensors):
            dst.copy_(src)
        graph.replay()
        return static_out.clone()

    def _note(self, text: str, warn: bool = False) -> None:
        self.stats.notes.append(text)
        if warn:
            warnings.warn(f"mmxai_fast: {text}", RuntimeWarning, stacklevel=3)

    # ------------------------------------------------------------------ batching plan

    def choose_perturbations_per_eval(self, inputs: Tuple[Tensor, ...], extra: Tuple,
                                      max_perturbations: Optional[int] = None) -> int:
        """The chunk size for ``batch="auto"`` (1 when batching is unsafe; see module docstring).

        Probes cost about twice the chosen chunk in model evaluations: one timed call per
        doubling (1, 2, 4, ...), the first two with distinct rows for the batch-independence check.
        """
        rates: Dict[int, float] = {}
        reason = self._batching_blocker(inputs, extra, rates)
        if reason:
            self._note(f"batch=auto kept perturbations_per_eval=1: {reason}", warn="per batch" not in reason)
            return 1
        cap = min(MAX_PROBE_PERTURBATIONS, max_perturbations or MAX_PROBE_PERTURBATIONS,
                  max(1, self._budget(inputs[0].device) // sum(x.numel() * x.element_size() for x in inputs)))
        best = 2 if rates[2] >= rates[1] * MIN_GAIN else 1
        size = 4
        while best == size // 2 and size <= cap:
            rates[size] = self._timed(_repeat(inputs, size), _expand(extra, size, self.num_examples))[0] * size
            if rates[size] >= rates[best] * MIN_GAIN:
                best = size
            size *= 2
        best = min(best, cap)
        self._choose_layout(inputs, extra, best, rates[best])
        self._note(f"batch=auto: perturbations_per_eval={best} (measured {rates[best]:.1f} evaluations/s "
                   f"against {rates[1]:.1f} at 1; channels_last_3d {'on' if self.channels_last else 'off'})")
        return best

    def _batching_blocker(self, inputs: Tuple[Tensor, ...], extra: Tuple, rates: Dict[int, float]) -> Optional[str]:
        training = [type(m).__name__ for m in _modules_of(self.forward_func) if m.training]
        if training:
            return f"the model ({training[0]}) is in train mode: BatchNorm/Dropout outputs depend on the batch"
        n = self.num_examples
        rate, single = self._timed(inputs, extra)
        rates[1] = rate
        if _leading(single) != n:
            return "the model returns one value per batch, not one per example"
        other = tuple(torch.zeros_like(x) for x in inputs)
        alone = self.raw(*other, *extra)
        rate, both = self._timed(tuple(torch.cat([x, o]) for x, o in zip(inputs, other)), _expand(extra, 2, n))
        rates[2] = 2 * rate
        if not _close(both, torch.cat([single, alone])):
            return "a batch of two different rows gave other outputs than the rows alone"
        return None

    def _choose_layout(self, inputs: Tuple[Tensor, ...], extra: Tuple, size: int, plain_rate: float) -> None:
        if self.policy.channels_last != "auto" or not any(x.dim() == 5 for x in inputs):
            return
        batch, args = _repeat(inputs, size), _expand(extra, size, self.num_examples)
        plain = self.raw(*batch, *args)
        self.channels_last = True
        fast_rate, fast = self._timed(batch, args)
        self.channels_last = fast_rate * size > plain_rate * 1.05 and _close(fast, plain)

    def _timed(self, batch: Tuple, args: Tuple) -> Tuple[float, Any]:
        """(calls per second, output) of one model call."""
        start = time.perf_counter()
        out = self.raw(*batch, *args)
        return 1.0 / max(time.perf_counter() - start, 1e-9), out

    @staticmethod
    def _budget(device: torch.device) -> int:
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            return int(free // 8)
        return CPU_BATCH_BUDGET


def _repeat(inputs: Tuple[Tensor, ...], times: int) -> Tuple[Tensor, ...]:
    return tuple(x.repeat(times, *([1] * (x.dim() - 1))) for x in inputs)


def _expand(extra: Tuple, times: int, n: int) -> Tuple:
    """Additional forward args for ``times`` perturbations of ``n`` examples (Captum's rule:
    tensors with ``n`` leading rows are repeated, everything else passes unchanged)."""
    if times == 1:
        return extra
    return tuple(a.repeat(times, *([1] * (a.dim() - 1))) if isinstance(a, Tensor) and a.dim() > 0
                 and a.shape[0] == n else a for a in extra)
