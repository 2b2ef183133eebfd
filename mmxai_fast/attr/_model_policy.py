"""The settings of the Evaluator's model-speed policies for patched Captum, and their report.

:func:`mmxai_fast.patch_captum` (and ``mmxai-fast run``) runs every ``attribute`` call inside a
:func:`policy_session`: the :class:`~mmxai_fast.attr._evaluator.Evaluator` built during the call
reads the :class:`ModelPolicy` with :func:`active_session` and applies it
(:mod:`mmxai_fast.attr._evaluator_policy`):

- ``batch="auto"``: the patch turns a caller's ``perturbations_per_eval=1`` into ``"auto"``
  (the chunk grown by measured throughput, checked for batch dependence; see the Evaluator);
  ``"keep"``/None: the caller's value.
- ``channels_last="auto"|True|False``: 5-D inputs in ``torch.channels_last_3d`` when measured
  faster (``"auto"``, decided during ``"auto"`` chunking), always, or never.
- ``inference_mode=True``: model calls under :func:`torch.inference_mode`.
- ``onednn_conv="auto"|True|False``: float32 CPU ``conv3d`` calls that PyTorch would run on its
  slow batch-1 path go to oneDNN (:mod:`mmxai_fast.attr._onednn_conv`; ``"auto"``: kernels larger
  than 1x1x1, and 1x1x1 ones of channels-last inputs, True: all of them, False: never).
- Opt-in ``fold_batchnorm=True``: CPU models are called as a copy with each eval-mode BatchNorm folded
  into the convolution before it (and a ReLU after it fused in; :mod:`mmxai_fast.attr._fold_batchnorm`).
- ``incremental=False|True|"auto"``: what Occlusion, FeatureAblation and ShapleyValueSampling
  calls that leave their ``incremental`` argument unset (every Captum call) use: ``"auto"``
  recomputes only each perturbation's projective field where the plan predicts a gain
  (:mod:`mmxai_fast.attr._incremental`; exact to float rounding).
- Opt-in: ``autocast="bf16"|"fp16"`` (error against float32 on the first chunk reported),
  ``compile=True`` (``torch.compile`` of the model), ``cuda_graphs=True`` (replay of one captured
  graph per fixed chunk shape on CUDA). Each reports its measured gain or why it was not used.

Every model call is timed; :data:`REPORT` collects per attribution class: calls, model
evaluations (perturbed copies of the input, checks not counted), model calls, time in the model
and wall time, and the Evaluator's notes (chunk size chosen, layout, fallbacks).
"""
from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Tuple

__all__ = ["CALLS", "ModelPolicy", "REPORT", "active_session", "format_calls", "format_report", "policy_session",
           "reset_report"]


@dataclasses.dataclass(frozen=True)
class ModelPolicy:
    """Settings of the Evaluator's speed policies under a patch (see the module docstring)."""

    batch: Optional[str] = None          # "auto" | "keep" | None (keep the caller's value)
    channels_last: Any = "auto"          # "auto" | True | False
    inference_mode: bool = True
    onednn_conv: Any = "auto"            # "auto" | True | False
    autocast: Optional[str] = None       # None | "bf16" | "fp16"
    compile: bool = False
    cuda_graphs: bool = False
    incremental: Any = False             # False | True | "auto": for calls that leave ``incremental`` unset
    fold_batchnorm: bool = False         # opt-in: the Evaluator calls a folded copy of the model

    def __post_init__(self) -> None:
        checks = [("batch", self.batch, (None, "auto", "keep")),
                  ("channels_last", self.channels_last, ("auto", True, False)),
                  ("onednn_conv", self.onednn_conv, ("auto", True, False)),
                  ("incremental", self.incremental, ("auto", True, False)),
                  ("autocast", self.autocast, (None, "bf16", "fp16"))]
        for name, value, allowed in checks:
            if not any(value is a or (isinstance(a, str) and value == a) for a in allowed):
                raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
        for name in ("inference_mode", "compile", "cuda_graphs", "fold_batchnorm"):
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


_local = threading.local()


@contextlib.contextmanager
def policy_session(policy: ModelPolicy, stats: MethodStats) -> Iterator[None]:
    """Evaluators built inside the block (this thread) apply ``policy`` and count into ``stats``."""
    saved = getattr(_local, "session", None)
    _local.session = (policy, stats)
    try:
        yield
    finally:
        _local.session = saved


def active_session() -> Optional[Tuple[ModelPolicy, MethodStats]]:
    """The (policy, stats) of the :func:`policy_session` in progress on this thread, or None."""
    return getattr(_local, "session", None)
