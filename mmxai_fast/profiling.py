"""Where the time of an attribution goes: the model, or the engine around it.

- :func:`phase`: a named range (``torch.profiler.record_function`` plus an NVTX range on CUDA, so
  it shows in Perfetto and Nsight Systems) around one phase of the work: ``"perturb"`` (building
  perturbed inputs), ``"model"``, ``"accumulate"``, ``"communication"``.
- :func:`profile_attributions`: a context manager that profiles any code, e.g. unmodified
  Captum-style ``attribute`` calls. It times every outermost ``nn.Module`` call (global forward
  hooks, so the model needs no wrapping; TorchScript modules included), runs ``torch.profiler``
  and, on exit, classifies the time into model, perturbation building, accumulation, communication
  and the rest (Python bookkeeping)::

      from mmxai_fast.profiling import profile_attributions

      with profile_attributions(trace="trace.json") as prof:
          attr = ShapleyValueSampling(model).attribute(x, target=1, feature_mask=mask, n_samples=8)
      print(prof.report())        # breakdown, evaluations per second, top ops
      prof.save_png("breakdown.png")

Perturbation and accumulation time come from the engine's ops (``mmxai_fast::perturb``,
``shapley_coalitions``, ``occlusion_batch`` / ``shapley_accumulate``, ``occlusion_attribution``)
or from :func:`phase` ranges when the code sets them. Backward passes of gradient methods are not
model forward calls: they count as "other".
"""
from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Dict, Iterator, List, Optional, Tuple

import torch

__all__ = ["phase", "profile_attributions", "AttributionProfile", "PHASES"]

PHASES = ("model", "perturb", "accumulate", "communication", "other")
_RANGE_PREFIX = "mmxai."
_OP_PHASE = {"perturb": "perturb", "perturb_out": "perturb", "occlusion_batch": "perturb",
             "shapley_coalitions": "perturb", "shapley_accumulate": "accumulate",
             "occlusion_attribution": "accumulate"}


def _nvtx():
    return torch.cuda.nvtx if torch.cuda.is_available() else None


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """A ``mmxai.<name>`` range for torch.profiler (and NVTX on CUDA); near-free when no profiler runs."""
    nvtx = _nvtx()
    if nvtx is not None:
        nvtx.range_push(_RANGE_PREFIX + name)
    try:
        with torch.profiler.record_function(_RANGE_PREFIX + name):
            yield
    finally:
        if nvtx is not None:
            nvtx.range_pop()


@dataclass
class AttributionProfile:
    """The breakdown of one profiled block (filled in when the block exits).

    Attributes:
        wall_s: wall time of the block.
        model_s: time inside outermost module calls (CUDA synchronised at their edges).
        model_calls / model_examples: outermost module calls and the examples (dim 0) they saw.
        phases: seconds per :data:`PHASES` entry; they add up to ``wall_s``.
        ops: ``(name, self seconds, calls)`` of the most expensive profiler ops.
    """

    wall_s: float = 0.0
    model_s: float = 0.0
    model_calls: int = 0
    model_examples: int = 0
    phases: Dict[str, float] = field(default_factory=dict)
    ops: List[Tuple[str, float, int]] = field(default_factory=list)
    profiler: Optional[torch.profiler.profile] = field(default=None, repr=False)

    @property
    def evaluations_per_s(self) -> float:
        return self.model_examples / self.wall_s if self.wall_s > 0 else 0.0

    @property
    def model_share(self) -> float:
        return self.model_s / self.wall_s if self.wall_s > 0 else 0.0

    def to_dict(self) -> Dict[str, object]:
        return {"wall_s": self.wall_s, "model_s": self.model_s, "model_share": self.model_share,
                "model_calls": self.model_calls, "model_examples": self.model_examples,
                "evaluations_per_s": self.evaluations_per_s, "phases_s": dict(self.phases),
                "top_ops": [{"name": n, "self_s": s, "calls": c} for n, s, c in self.ops]}

    def report(self, top: int = 10) -> str:
        """The breakdown as text: phases with their share of the wall time, evaluations per
        second, and the ``top`` most expensive ops."""
        lines = [f"wall time          {self.wall_s:.3f} s",
                 (f"model              {self.model_s:.3f} s ({100 * self.model_share:.1f}%), "
                  f"{self.model_calls} calls, {self.model_examples} inputs"),
                 f"engine             {self.wall_s - self.model_s:.3f} s ({100 * (1 - self.model_share):.1f}%)",
                 f"evaluations/s      {self.evaluations_per_s:.1f}", "phases:"]
        for name in PHASES:
            seconds = self.phases.get(name, 0.0)
            share = seconds / self.wall_s if self.wall_s > 0 else 0.0
            lines.append(f"  {name:<16} {seconds:8.3f} s {100 * share:5.1f}%")
        if self.ops:
            lines.append("top ops (self time):")
            lines += [f"  {name[:48]:<48} {seconds:8.4f} s {calls:7d} calls" for name, seconds, calls in self.ops[:top]]
        return "\n".join(lines)

    def export_chrome_trace(self, path: str) -> None:
        """Chrome trace (opens in Perfetto / chrome://tracing)."""
        if self.profiler is None:
            raise ValueError("profile_attributions(use_profiler=False) recorded no trace")
        self.profiler.export_chrome_trace(str(path))

    def save_png(self, path: str, top: int = 12) -> None:
        """Two bar charts: seconds per phase, and self seconds of the ``top`` ops."""
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure

        figure = Figure(figsize=(11, 4.5))
        FigureCanvasAgg(figure)
        left, right = figure.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.6]})
        values = [self.phases.get(n, 0.0) for n in PHASES]
        left.bar(PHASES, values, color=["#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#7f7f7f"])
        left.set_ylabel("seconds")
        left.set_title(f"phases ({self.wall_s:.2f} s wall, {self.evaluations_per_s:.0f} evaluations/s)")
        left.tick_params(axis="x", rotation=30)
        ops = self.ops[:top][::-1]
        right.barh([n[:40] for n, _, _ in ops], [s for _, s, _ in ops], color="#1f77b4")
        right.set_xlabel("self seconds")
        right.set_title("top ops")
        figure.tight_layout()
        figure.savefig(str(path), dpi=110)


class _ModelClock:
    """Global forward hooks timing the outermost module calls (nested modules are inside them)."""

    def __init__(self):
        self.depth = 0
        self.start = 0.0
        self.profile = None
        self.range = None
        self.handles = []

    @staticmethod
    def _sync(args) -> None:
        first = args[0] if args else None
        if isinstance(first, torch.Tensor) and first.device.type == "cuda":
            torch.cuda.synchronize(first.device)

    def pre(self, module, args):
        if self.depth == 0:
            self._sync(args)
            self.range = phase("model")
            self.range.__enter__()
            first = args[0] if args else None
            self.profile.model_calls += 1
            self.profile.model_examples += int(first.shape[0]) if isinstance(first, torch.Tensor) and first.dim() else 1
            self.start = time.perf_counter()
        self.depth += 1

    def post(self, module, args, output):
        self.depth -= 1
        if self.depth == 0:
            self._sync((output,) if isinstance(output, torch.Tensor) else args)
            self.profile.model_s += time.perf_counter() - self.start
            self.range.__exit__(None, None, None)

    def attach(self, profile: AttributionProfile) -> None:
        from torch.nn.modules import module as nn_module

        self.profile = profile
        self.handles = [nn_module.register_module_forward_pre_hook(self.pre),
                        nn_module.register_module_forward_hook(self.post)]

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        if self.depth and self.range is not None:  # a forward raised: close its range
            self.range.__exit__(None, None, None)
        self.depth = 0


def _classify(profile: AttributionProfile, events) -> None:
    ranges: Dict[str, float] = {}
    op_phase = {"perturb": 0.0, "accumulate": 0.0}
    ops = []
    for event in events:
        if event.key.startswith(_RANGE_PREFIX):
            ranges[event.key[len(_RANGE_PREFIX):]] = ranges.get(event.key[len(_RANGE_PREFIX):], 0.0) + \
                event.cpu_time_total / 1e6
            continue
        if event.key.startswith("mmxai_fast::"):
            kind = _OP_PHASE.get(event.key.split("::", 1)[1])
            if kind:
                op_phase[kind] += event.cpu_time_total / 1e6
        if event.key.startswith("ProfilerStep"):
            continue
        ops.append((event.key, event.self_cpu_time_total / 1e6, int(event.count)))
    phases = {"model": profile.model_s}
    for name in ("perturb", "accumulate"):
        phases[name] = ranges.get(name, op_phase[name])
    phases["communication"] = ranges.get("communication", 0.0)
    phases["other"] = max(0.0, profile.wall_s - sum(phases.values()))
    profile.phases = phases
    profile.ops = sorted(ops, key=lambda item: -item[1])


@contextlib.contextmanager
def profile_attributions(trace: Optional[str] = None, use_profiler: bool = True,
                         record_shapes: bool = False) -> Iterator[AttributionProfile]:
    """Profile the block: yields an :class:`AttributionProfile`, complete once the block exits.

    Args:
        trace: write a Chrome trace there on exit (needs ``use_profiler``).
        use_profiler: run ``torch.profiler`` (op breakdown, trace); False: only the model clock
            and wall time (near-zero overhead).
        record_shapes: let the profiler record input shapes (bigger traces).
    """
    if trace is not None and not use_profiler:
        raise ValueError("trace needs use_profiler=True")
    profile = AttributionProfile()
    clock = _ModelClock()
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    prof_cm = (torch.profiler.profile(activities=activities, record_shapes=record_shapes) if use_profiler
               else contextlib.nullcontext())
    clock.attach(profile)
    start = time.perf_counter()
    try:
        with prof_cm as prof:
            yield profile
    finally:
        profile.wall_s = time.perf_counter() - start
        clock.detach()
    if use_profiler:
        profile.profiler = prof
        _classify(profile, prof.key_averages())
        if trace is not None:
            profile.export_chrome_trace(trace)
    else:
        _classify(profile, [])
