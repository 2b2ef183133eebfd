"""Incremental inference inside the attribution classes (``incremental=False | True | "auto"``).

:func:`use_incremental` swaps an :class:`~mmxai_fast.attr._evaluator.Evaluator`'s
:meth:`~mmxai_fast.attr._evaluator.Evaluator.run_rows` for :class:`IncrementalRows`: each chunk's
rows become boxes (Occlusion: the window; coalition rows: the bounding box of the features that
differ from the reference), and the model call goes through an
:class:`~mmxai_fast.incremental.IncrementalRunner` instead of the dense model. Coalition rows
(Shapley chains) advance per-row activation states (``runner.step``) when the chunk differs less
from the previous chunk's rows than from the reference; otherwise the states restart from the
reference. Target selection, output checks and chunking stay the evaluator's.

Only one input tensor ``(1, C, *S)``, an ``nn.Module`` forward and no ``additional_forward_args``
qualify; anything else (or a model ``torch.fx`` cannot trace) runs densely with the reason in the
report (``last_incremental_report`` on the attribution object).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Any, Dict, Optional

import torch
from torch import Tensor

from ..incremental import IncrementalPlan, IncrementalRunner, feature_boxes, window_boxes
from ._errors import AttributionInputError
from ._evaluator import Evaluator
from ._onednn_conv import onednn_conv3d
from ._perturbers import CoalitionPerturber, WindowPerturber

__all__ = ["use_incremental", "check_incremental", "step_major", "IncrementalRows", "AUTO_MIN_SPEEDUP"]

#: ``incremental="auto"`` uses the runner when the plan predicts more than this FLOP ratio.
AUTO_MIN_SPEEDUP = 1.5
#: ... and more than this one when each call holds one row (``perturbations_per_eval=1``): the
#: executor's per-layer gathers are then paid per row (MONAI DenseNet-121 Occlusion, predicted
#: 1.88x: 0.6x of dense at one row per call, 1.3x at 64).
AUTO_MIN_SPEEDUP_ONE_ROW = 3.0
#: Bytes of per-chain activation states a Shapley walk may hold (chains per call are capped to fit).
CHAIN_STATE_BUDGET = 2 * 2**30
#: rows changing up to this many features hand the runner each feature's box (split or merged).
MAX_PARTS = 8


def check_incremental(value: Any) -> Any:
    if value is None or value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    raise AttributionInputError(f"incremental must be False, True, 'auto' or None (the patch policy's), got {value!r}")


def _dense_report(requested: Any, reason: str, **extra) -> Dict[str, Any]:
    return dict(requested=requested, used=False, reason=reason, predicted_speedup=None, cache_bytes=0,
                model_seconds=0.0, model_calls=0, unsupported=[], **extra)


def _why_not(evaluator: Evaluator) -> Optional[str]:
    inputs, perturber = evaluator.inputs, evaluator.perturber
    if not isinstance(evaluator.forward_func, torch.nn.Module):
        return "forward_func is not a torch.nn.Module"
    if len(inputs) != 1:
        return f"{len(inputs)} input tensors (incremental inference takes one)"
    x = inputs[0]
    if x.dim() < 3 or x.shape[0] != 1 or not x.is_floating_point():
        return f"inputs must be one floating example (1, C, *S), got {tuple(x.shape)} {x.dtype}"
    if evaluator.additional_forward_args is not None:
        return "additional_forward_args are not supported incrementally"
    if not isinstance(perturber, (CoalitionPerturber, WindowPerturber)):
        return f"perturber {type(perturber).__name__} has no boxes"
    return None


def _mask_boxes(perturber: CoalitionPerturber, num_features: int, spatial) -> Tensor:
    """``[columns, nd, 2]`` spatial bounding box of every keep column's feature."""
    mask = perturber.masks[0].cpu()
    columns = max(num_features + int(perturber.keep_last), int(mask.max()) + 1 if mask.numel() else 0)
    return feature_boxes(mask[0] if mask.dim() == len(spatial) + 2 else mask, columns, spatial)


def use_incremental(evaluator: Evaluator, incremental: Any, *, num_features: int = 0,
                    reference_keep: bool = True) -> Dict[str, Any]:
    """Make ``evaluator`` incremental per ``incremental`` (False / True / ``"auto"``); returns the
    report dict (updated in place while the evaluator runs). ``reference_keep``: coalition rows
    are relative to all-kept (the input: FeatureAblation) or all-removed (the baseline: Shapley);
    ``num_features``: their width."""
    check_incremental(incremental)
    if incremental is None:  # left unset (every Captum call): the patch policy's setting, else dense
        incremental = evaluator.policy.incremental
    if incremental is False:
        return _dense_report(False, "incremental=False")
    reason = _why_not(evaluator)
    if reason is None:
        try:
            return IncrementalRows(evaluator, incremental, num_features, reference_keep).report
        except Exception as err:  # untraceable by torch.fx, shape mismatch: dense stays exact
            reason = f"plan failed: {type(err).__name__}: {err}"
    if incremental is True:
        warnings.warn(f"incremental=True falls back to dense evaluation: {reason}", stacklevel=3)
    evaluator._note(f"incremental inference not used: {reason}")
    return _dense_report(incremental, reason)


def step_major(evaluator: Evaluator, perm_index: Tensor, prefix_size: Tensor, num_perms: int):
    """Reorder a permutation walk's rows (permutation-major) so that each chunk holds one step of
    ``c = min(rows_per_eval, num_perms)`` permutations (Shapley chains advancing together);
    returns ``(perm_index, prefix_size, restore)`` with ``outputs[restore]`` in the original
    order. Unchanged (``restore`` a full slice) when ``evaluator`` is not incremental."""
    if not isinstance(getattr(evaluator.run_rows, "__self__", None), IncrementalRows) or num_perms < 2:
        return perm_index, prefix_size, slice(None)
    chains = evaluator.rows_per_eval = min(evaluator.rows_per_eval or 1, num_perms)
    steps = perm_index.numel() // num_perms
    index = torch.arange(perm_index.numel(), device=perm_index.device).reshape(num_perms, steps)
    order = torch.cat([block.t().reshape(-1) for block in index.split(chains)])
    return perm_index[order], prefix_size[order], order.argsort()


class IncrementalRows:
    """The ``run_rows`` strategy of an incremental evaluator (see the module docstring)."""

    def __init__(self, evaluator: Evaluator, requested: Any, num_features: int, reference_keep: bool) -> None:
        perturber: Any = evaluator.perturber  # a CoalitionPerturber or WindowPerturber (see _why_not)
        model: Any = evaluator.forward_func
        self.evaluator, self.perturber, self.model = evaluator, perturber, model
        x = evaluator.inputs[0]
        self.spatial = tuple(x.shape[2:])
        self.windowed = isinstance(self.perturber, WindowPerturber)
        if self.windowed:
            self.reference = x
            all_boxes = window_boxes(self.perturber.windows[0], range(self.perturber.total_windows))
        else:
            self.columns = _mask_boxes(self.perturber, num_features, self.spatial)
            self.reference_keep = reference_keep
            keep = torch.full((1, num_features), reference_keep, dtype=torch.bool, device=x.device)
            self.reference = self.perturber(keep)[0].reshape(x.shape).clone()
            all_boxes = self.columns[:num_features]
            all_boxes = all_boxes[(all_boxes[..., 1] > all_boxes[..., 0]).all(-1)]
        threshold = AUTO_MIN_SPEEDUP_ONE_ROW if evaluator.perturbations_per_eval == 1 else AUTO_MIN_SPEEDUP
        # Projective fields only grow: the input boxes bound the gain, without tracing the model.
        bound = math.prod(self.spatial) / max(1.0, self._volume(all_boxes) / len(all_boxes)) if len(all_boxes) else 1.0
        plan = IncrementalPlan.from_module(self.model, self.reference) if requested is True or \
            bound > threshold else None
        predicted = bound if plan is None else float(plan.predicted_speedup(all_boxes)) if len(all_boxes) else 1.0
        self.report: Dict[str, Any] = dict(
            requested=requested, used=False, reason="", predicted_speedup=predicted, cache_bytes=0,
            model_seconds=0.0, model_calls=0, unsupported=[] if plan is None else plan.unsupported)
        self.runner: Optional[IncrementalRunner] = None
        self.pending: Optional[tuple] = None
        evaluator.forward_func = self  # times the model calls, dense or not
        if evaluator.caller is not None:  # the speed policies (oneDNN, inference mode) wrap the runner too
            self.model = evaluator.caller.use_model(self)  # dense calls: the caller's (folded) model
        if plan is None or (requested == "auto" and predicted <= threshold):
            why = f"predicted speedup {predicted:.2f} <= {threshold}"
            if plan is None:
                why = (f"the perturbed boxes cover {100 / bound:.0f}% of the input on average: at most "
                       f"{bound:.2f}x <= {threshold}")
            elif plan.unsupported:
                why += "; dense from " + ", ".join(f"{n} ({r})" for n, r in plan.unsupported)
            self.report["reason"] = why
            evaluator._note(f"incremental inference not used: {why}")
            return
        with onednn_conv3d(evaluator.caller.onednn if evaluator.caller is not None else False):
            self.runner = IncrementalRunner(plan, self.reference)  # the reference pass, on oneDNN as the model calls
        self.report.update(used=True, cache_bytes=self.runner.cache_bytes,
                           reason="incremental=True" if requested is True
                           else f"predicted speedup {predicted:.2f} > {threshold}")
        if not self.windowed and not reference_keep:  # one activation copy per chain
            evaluator.row_cap = max(1, CHAIN_STATE_BUDGET // max(1, self.runner.cache_bytes))
        evaluator._note(f"incremental inference: predicted {predicted:.2f}x fewer FLOPs, reference cache "
                        f"{self.runner.cache_bytes / 2**20:.0f} MiB")
        self.states: Optional[Dict] = None
        self.state_keep: Optional[Tensor] = None
        evaluator.run_rows = self.run_rows  # type: ignore[method-assign]

    # ------------------------------------------------------------------ boxes of rows

    def _changed_boxes(self, changed: Tensor) -> Tensor:
        """``[R, nd, 2]`` bounding box of each row's changed columns (a 1-voxel box if none:
        a larger box than needed is always exact)."""
        boxes = self.columns[:changed.shape[1]].to(changed.device)
        big = torch.iinfo(torch.int64).max
        lo = torch.where(changed[:, :, None], boxes[None, :, :, 0], big).amin(1)
        hi = torch.where(changed[:, :, None], boxes[None, :, :, 1], -1).amax(1)
        none = ~changed.any(1)
        lo = torch.where(none[:, None], 0, lo)
        hi = torch.where(none[:, None], 1, hi)
        return torch.stack((lo, hi), -1).cpu()

    def _column_boxes(self, changed: Tensor) -> Tensor:
        """``[R, K, nd, 2]``: each row's changed columns' own boxes (empty boxes pad), for the
        runner to recompute separately or as their bounding box; the bounding box ``[R, nd, 2]``
        when a row changes more than ``MAX_PARTS`` columns."""
        counts = changed.sum(1)
        if int(counts.max()) <= 1 or int(counts.max()) > MAX_PARTS:
            return self._changed_boxes(changed)
        boxes = self.columns[:changed.shape[1]].cpu()
        order = torch.argsort(changed.cpu().to(torch.int8), dim=1, descending=True, stable=True)[:, :int(counts.max())]
        parts = boxes[order]  # [R, K, nd, 2]
        valid = torch.arange(order.shape[1])[None] < counts.cpu()[:, None]
        return torch.where(valid[:, :, None, None], parts, 0)

    @staticmethod
    def _volume(boxes: Tensor) -> int:
        return int((boxes[..., 1] - boxes[..., 0]).clamp_min(0).prod(-1).sum())

    def run_rows(self, rows: Tensor, previous_rows: Optional[Tensor] = None) -> Tensor:
        if self.windowed:
            self.pending = ("run", window_boxes(self.perturber.windows[0], rows.tolist()))
        elif self.reference_keep:  # FeatureAblation: the input is every row's closest state, no chains
            self.pending = ("run", self._column_boxes(~rows))
        else:  # Shapley: each row from its chain's previous state, or from the baseline when closer
            from_ref = rows != self.reference_keep
            changed = None
            if self.state_keep is not None and self.state_keep.shape == rows.shape:
                changed = rows != self.state_keep
            if changed is None or self._volume(self._changed_boxes(changed)) >= self._volume(self._changed_boxes(from_ref)):
                self.states, changed = self.runner.start_chains(rows.shape[0]), from_ref
            self.state_keep = rows.clone()
            self.pending = ("step", self._column_boxes(changed))
        ev = self.evaluator
        return ev._call_model(self.perturber(rows, ev.buffer), rows.shape[0])

    def __call__(self, inputs: Tensor) -> Tensor:
        """The forward the evaluator calls: incremental for a pending chunk, else dense (the
        unperturbed first evaluation)."""
        pending, self.pending = self.pending, None
        sync = torch.cuda.synchronize if inputs.is_cuda else (lambda: None)
        start = time.perf_counter()
        if pending is None and self.runner is not None and isinstance(self.runner.reference_output, Tensor) \
                and torch.equal(inputs, self.reference):
            out = self.runner.reference_output.clone()  # the unperturbed evaluation, already computed
        elif pending is None:
            out = self.model(inputs)
        elif pending[0] == "run":
            out = self.runner.run(inputs, pending[1])
        else:
            out = self.runner.step(self.states, inputs, pending[1])
        sync()
        self.report["model_seconds"] += time.perf_counter() - start
        self.report["model_calls"] += 1
        return out
