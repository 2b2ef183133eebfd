"""Execution of an :class:`IncrementalPlan`: cache the reference activations once, then for a batch
of perturbed inputs (each with its own changed box) recompute every layer only on its affected box
plus halo, batched across the rows (gather the boxes, run the layer on the stacked boxes), and run
the dense tail on the materialised activations.

Two modes share the code: ``run`` (each row relative to the cached reference: occlusion windows,
feature ablation) and chains (``start_chains`` / ``step``: each row relative to its own previous
state, updated in place: Shapley permutation chains, where each step adds one feature).
"""
from __future__ import annotations

import functools
from typing import Any, Callable, Dict, List, Optional, cast

import torch
from torch import fx

from .boxes import boxes_tensor, threshold_cap
from .plan import IncrementalPlan


class _Patched:
    """A node's value for all rows: ``base`` (the reference ``[1, C, *S]`` or per-row states
    ``[B, C, *S]``) with the recomputed boxes ``data`` ``[B, C, *size]`` at ``starts``."""

    __slots__ = ("data", "starts", "size", "base", "overlay")

    def __init__(self, data, starts: List[List[int]], size, base, overlay: bool):
        self.data, self.starts, self.size, self.base, self.overlay = data, starts, tuple(size), base, overlay


def _slices(a, b):
    return (slice(None),) + tuple(slice(x, y) for x, y in zip(a, b))


def _row_indices(starts: torch.Tensor, size, bounds):
    """Per spatial dim: clamped indices ``[B, 1.., R_d, ..1]`` of ``starts + arange(R_d)`` and
    the mask of the positions inside ``[0, bounds_d)`` (broadcast to ``[B, *R]``)."""
    rows, nd = starts.shape
    idx, inside = [], None
    for d in range(nd):
        pos = starts[:, d:d + 1] + torch.arange(size[d])
        shape = [rows] + [1] * nd
        shape[d + 1] = size[d]
        ok = ((pos >= 0) & (pos < bounds[d])).view(shape)
        inside = ok if inside is None else inside & ok
        idx.append(pos.clamp(0, bounds[d] - 1).view(shape))
    return idx, inside


def _gather(v: _Patched, starts: List[List[int]], size, pad: float) -> torch.Tensor:
    """``[B, C, *size]``: each row's values on its region (``pad`` outside the map), gathered for
    all rows at once (a few large ops instead of several small copies per row)."""
    if v.overlay and v.data is not None and tuple(size) == v.size and starts == v.starts:
        return v.data
    base, nd = v.base, len(size)
    rows = len(starts)
    st = torch.tensor(starts, dtype=torch.int64).view(rows, nd)
    idx, inside = _row_indices(st, size, base.shape[2:])
    which = torch.arange(rows) if base.shape[0] != 1 else torch.zeros(rows, dtype=torch.int64)
    out = base.movedim(1, -1)[(which.view([rows] + [1] * nd), *idx)]  # [B, *size, C]
    if not bool(inside.all()):
        out = out.masked_fill(~inside.unsqueeze(-1), pad)
    if v.overlay and v.data is not None:
        rel, in_patch = _row_indices(st - torch.tensor(v.starts, dtype=torch.int64).view(rows, nd), size, v.size)
        # rel is clamped: outside the patch it reads a wrong patch value, masked out below
        patch = v.data.movedim(1, -1)[(torch.arange(rows).view([rows] + [1] * nd), *rel)]
        out = torch.where(in_patch.unsqueeze(-1), patch, out)
    return out.movedim(-1, 1).contiguous()


def _densify(v: _Patched, rows: int) -> torch.Tensor:
    if v.data is None:
        return v.base
    if v.size == tuple(v.base.shape[2:]):
        return v.data
    if not v.overlay:
        return v.base.clone()
    out = v.base.expand(rows, *v.base.shape[1:]).clone()
    for r, ps in enumerate(v.starts):
        out[r][_slices(ps, [p + n for p, n in zip(ps, v.size)])] = v.data[r]
    return out


def _inplace(node: fx.Node, modules) -> bool:
    if node.kwargs.get("inplace", False) is True:
        return True
    if node.op == "call_module":
        return getattr(modules[node.target], "inplace", False) is True
    return node.op == "call_method" and str(node.target).endswith("_")


class IncrementalRunner:
    """Run ``plan`` incrementally around a reference input.

    Args:
        plan: from :meth:`IncrementalPlan.from_module`.
        reference_input: ``(1, C, *S)`` (or ``(C, *S)``) unperturbed input; its activations are
            cached once. Create and use the runner under the same ``torch.autocast`` context.
        memory_budget: bytes for the reference cache (default unlimited). When the cache would
            exceed it, the plan runs densely from the earliest node that keeps it within budget.
        threshold: Krypton's projective-field threshold ``tau`` in (0, 1]: cap each recomputed
            box side at ``ceil(tau * map side)`` (approximate; ``None`` = exact).

    Attributes:
        cache_bytes: memory held by the reference cache; ``dense_from``: index of the node where
            the budget forced dense evaluation (``None`` if none).
    """

    def __init__(self, plan: IncrementalPlan, reference_input: torch.Tensor, memory_budget: Optional[int] = None,
                 threshold: Optional[float] = None):
        if not isinstance(plan, IncrementalPlan):
            raise TypeError(f"plan must be an IncrementalPlan, got {type(plan).__name__}")
        ref = reference_input.unsqueeze(0) if reference_input.dim() == len(plan.input_shape) else reference_input
        if tuple(ref.shape) != (1, *plan.input_shape):
            raise ValueError(f"reference_input must have shape (1, {', '.join(map(str, plan.input_shape))}), "
                             f"got {tuple(reference_input.shape)}")
        if threshold is not None and not 0 < threshold <= 1:
            raise ValueError(f"threshold must be in (0, 1] or None, got {threshold}")
        if memory_budget is not None and memory_budget < 0:
            raise ValueError(f"memory_budget must be >= 0 bytes or None, got {memory_budget}")
        self.plan, self.threshold, self.memory_budget = plan, threshold, memory_budget
        self.dense_from = self._cut(ref.element_size())
        self._eff = plan.effective_dense(self.dense_from)
        self._cached = set(plan.cached_nodes(self.dense_from))
        self._last_use = {}
        for i, node in enumerate(plan.nodes):
            for a in node.all_input_nodes:
                self._last_use[a] = i
        self._ref: Dict[fx.Node, torch.Tensor] = {}
        self._consts: Dict[fx.Node, object] = {}
        with torch.no_grad():
            self.reference_output = self._reference_pass(ref)
        self.cache_bytes = sum(t.numel() * t.element_size() for t in self._ref.values())

    def _cut(self, itemsize: int) -> Optional[int]:
        if self.memory_budget is None or self.plan.cache_bytes(None, itemsize) <= self.memory_budget:
            return None
        for cut in range(len(self.plan.nodes) - 1, -1, -1):
            if self.plan.cache_bytes(cut, itemsize) <= self.memory_budget:
                return cut
        return 0

    def _cap_fn(self):
        return None if self.threshold is None else functools.partial(threshold_cap, tau=self.threshold)

    def predicted_speedup(self, boxes) -> float:
        """Dense over incremental FLOPs for rows changed in ``boxes`` (``[B, nd, 2]``)."""
        return self.plan.predicted_speedup(boxes, self._cap_fn(), self.dense_from)

    # -- node execution ------------------------------------------------------------------------
    def _call(self, node: fx.Node, args, kwargs):
        if node.op == "call_module":
            return self.plan.modules[node.target](*args, **kwargs)
        # fx types every ``target`` as callable-or-str; which one it is follows from ``op``
        if node.op == "call_function":
            return cast(Callable[..., Any], node.target)(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], cast(str, node.target))(*args[1:], **kwargs)
        if node.op == "get_attr":
            return functools.reduce(getattr, cast(str, node.target).split("."), self.plan.gm)
        raise AssertionError(node.op)

    def _call_with(self, node: fx.Node, value_of):
        args = fx.node.map_arg(node.args, value_of)
        kwargs = fx.node.map_arg(node.kwargs, value_of)
        return self._call(node, args, kwargs)

    def _reference_pass(self, ref: torch.Tensor):
        env: Dict[fx.Node, Any] = {}
        modules = self.plan.modules
        for i, node in enumerate(self.plan.nodes):
            if node.op == "placeholder":
                env[node] = ref
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], lambda n: env[n])
            else:
                env[node] = self._call_with(node, lambda n: env[n])
            if node in self._cached:  # a later in-place op must not change the cached value
                value = env[node]
                self._ref[node] = value.clone() if any(_inplace(u, modules) for u in node.users) else value
            if self.plan.infos[node].kind == "const":
                self._consts[node] = env[node]
            self._free(env, node, i)
        raise AssertionError("graph without output")

    def _free(self, env, node, i):
        for a in node.all_input_nodes:
            if self._last_use.get(a) == i:
                env.pop(a, None)

    def _execute(self, inputs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, states=None):
        plan, rows = self.plan, inputs.shape[0]
        boxes = plan.propagate(lo, hi, self._cap_fn(), self.dense_from)
        env: Dict[fx.Node, object] = {}
        dense: Dict[fx.Node, torch.Tensor] = {}

        def as_dense(n):
            v = env[n]
            if not isinstance(v, _Patched):
                return v
            if n not in dense:
                dense[n] = _densify(v, rows)
            return dense[n]

        for i, node in enumerate(plan.nodes):
            info = plan.infos[node]
            if info.kind == "input":
                starts, size = boxes[node]
                env[node] = _Patched(None, starts.tolist(), size, inputs, overlay=False)
            elif info.kind == "const":
                env[node] = self._consts[node]
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], as_dense)
            elif self._eff[node]:
                env[node] = self._call_with(node, as_dense)
            else:
                env[node] = self._patched(node, info, env, boxes, states)
            self._free(env, node, i)
            for a in node.all_input_nodes:
                if a not in env:
                    dense.pop(a, None)
        raise AssertionError("graph without output")

    def _patched(self, node, info, env, boxes, states) -> _Patched:
        starts_t, size = boxes[node]
        starts = starts_t.tolist()
        if info.kind == "spatial":
            reg_starts, reg_size = info.window.input_region(starts_t, size)
            region = _gather(env[info.tensor_args[0]], reg_starts.tolist(), reg_size, info.pad_value)
            data = info.run_region(region)
        else:
            def value_of(n):
                v = env[n]
                if not isinstance(v, _Patched):
                    return v
                return v.data if info.kind == "unary" and v.data is not None else _gather(v, starts, size, 0.0)
            data = self._call_with(node, value_of)
        if node not in self._cached:
            return _Patched(data, starts, size, None, overlay=True)
        if states is None:
            return _Patched(data, starts, size, self._ref[node], overlay=True)
        state = states[node]
        for r, st in enumerate(starts):
            state[r][_slices(st, [s + n for s, n in zip(st, size)])] = data[r]
        return _Patched(data, starts, size, state, overlay=False)

    # -- public entry points -------------------------------------------------------------------
    def _check(self, inputs: torch.Tensor, boxes):
        if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape[1:]) != self.plan.input_shape:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must have shape (B, {', '.join(map(str, self.plan.input_shape))}), got {got}")
        return boxes_tensor(boxes, inputs.shape[0], self.plan.nd)

    def run(self, inputs: torch.Tensor, boxes) -> torch.Tensor:
        """Model outputs for ``inputs`` ``(B, C, *S)``, where row ``b`` differs from the reference
        only inside ``boxes[b]`` (``[B, nd, 2]`` of ``[start, stop)`` per spatial dim, or
        ``[B, K, nd, 2]``: several boxes, recomputed as their bounding box).

        Exact (to float rounding) unless ``threshold`` is set; a wrong box gives wrong outputs.
        """
        lo, hi = self._check(inputs, boxes)
        with torch.no_grad():
            return self._execute(inputs, lo, hi)

    def start_chains(self, chains: int) -> Dict[fx.Node, torch.Tensor]:
        """Per-row activation states for ``chains`` chains, all starting at the reference.

        Raises:
            ValueError: ``chains * cache_bytes`` exceeds ``memory_budget``.
        """
        if chains < 1:
            raise ValueError(f"chains must be >= 1, got {chains}")
        if self.memory_budget is not None and chains * self.cache_bytes > self.memory_budget:
            raise ValueError(f"chains * cache_bytes must be <= memory_budget {self.memory_budget}, "
                             f"got {chains} * {self.cache_bytes}")
        return {n: t.expand(chains, *t.shape[1:]).clone() for n, t in self._ref.items()}

    def step(self, states: Dict[fx.Node, torch.Tensor], inputs: torch.Tensor, boxes) -> torch.Tensor:
        """Advance each chain: row ``b`` of ``inputs`` differs from that chain's previous input only
        inside ``boxes[b]``; ``states`` are updated in place. Returns the model outputs."""
        lo, hi = self._check(inputs, boxes)
        rows = next(iter(states.values())).shape[0] if states else inputs.shape[0]
        if inputs.shape[0] != rows:
            raise ValueError(f"inputs must have one row per chain ({rows}), got {inputs.shape[0]}")
        with torch.no_grad():
            return self._execute(inputs, lo, hi, states)
