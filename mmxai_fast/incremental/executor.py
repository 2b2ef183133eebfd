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
import math
from typing import Any, Callable, Dict, List, Optional, cast

import torch
from torch import fx

from .boxes import box_parts, merge_parts, threshold_cap
from .plan import IncrementalPlan
from .split import choose_split


class _Patched:
    """A node's value for all rows: ``base`` (the reference ``[1, C, *S]`` or per-row states
    ``[B, C, *S]``) with the recomputed boxes ``data`` ``[B, C, *size]`` at ``starts``."""

    __slots__ = ("data", "starts", "size", "base", "overlay")

    def __init__(self, data, starts: List[List[int]], size, base, overlay: bool):
        self.data, self.starts, self.size, self.base, self.overlay = data, starts, tuple(size), base, overlay


def _slices(a, b):
    return (slice(None),) + tuple(slice(x, y) for x, y in zip(a, b))


def _clip(starts, size, bounds):
    """Per dim ``(lo, hi)`` of the box ``starts + [0, size)`` clipped to ``[0, bounds)``."""
    return [(max(s, 0), min(s + n, b)) for s, n, b in zip(starts, size, bounds)]


def _copy_box(dst: torch.Tensor, dst_starts, src: torch.Tensor, src_starts, lohi) -> None:
    """Copy the positions ``lohi`` (absolute ``(lo, hi)`` per dim) from ``src`` (``[C, *S]`` whose
    origin is at ``src_starts``) into ``dst`` (origin ``dst_starts``); nothing if empty."""
    if any(hi <= lo for lo, hi in lohi):
        return
    dst[(slice(None),) + tuple(slice(lo - d, hi - d) for (lo, hi), d in zip(lohi, dst_starts))] = \
        src[(slice(None),) + tuple(slice(lo - s, hi - s) for (lo, hi), s in zip(lohi, src_starts))]


def _gather(v: _Patched, starts: List[List[int]], size, pad: float, row_of: List[int]) -> torch.Tensor:
    """``[B, C, *size]``: each row's values on its region (``pad`` outside the map): per row one
    strided copy from the base and one of the overlapping part of the row's recomputed box."""
    if v.overlay and v.data is not None and tuple(size) == v.size and starts == v.starts:
        return v.data
    base, rows = v.base, len(starts)
    bounds = tuple(base.shape[2:])
    out = base.new_empty((rows, base.shape[1], *size))
    clipped = [_clip(st, size, bounds) for st in starts]
    if any(lo > s or hi < s + n for st, c in zip(starts, clipped) for (lo, hi), s, n in zip(c, st, size)):
        out.fill_(pad)
    origin = (0,) * len(bounds)
    patched = v.overlay and v.data is not None
    for r, (st, c) in enumerate(zip(starts, clipped)):
        _copy_box(out[r], st, base[row_of[r] if base.shape[0] != 1 else 0], origin, c)
        if patched:
            ps = v.starts[r]
            _copy_box(out[r], st, v.data[r], ps, [(max(lo, p), min(hi, p + n)) for (lo, hi), p, n in zip(c, ps, v.size)])
    return out


def _densify(v: _Patched, rows: int, row_of: List[int]) -> torch.Tensor:
    if v.data is None:
        return v.base
    if v.size == tuple(v.base.shape[2:]) and len(row_of) == rows:
        return v.data
    if not v.overlay:
        return v.base.clone()
    out = v.base.expand(rows, *v.base.shape[1:]).clone()
    for r, ps in enumerate(v.starts):
        out[row_of[r]][_slices(ps, [p + n for p, n in zip(ps, v.size)])] = v.data[r]
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
        min_parallel_flops: layers whose work for the batch is below this run on one thread
            (``torch.set_num_threads(1)``, restored after each call): a parallel region costs more
            than a small box's work, and on a busy machine each one waits for a core.

    Attributes:
        cache_bytes: memory held by the reference cache; ``dense_from``: index of the node where
            the budget forced dense evaluation (``None`` if none).
    """

    def __init__(self, plan: IncrementalPlan, reference_input: torch.Tensor, memory_budget: Optional[int] = None,
                 threshold: Optional[float] = None, min_parallel_flops: float = 1e9):
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
        self.min_parallel_flops = min_parallel_flops
        self.last_virtual_rows = 0
        self.dense_from = self._cut(ref.element_size())
        self._eff = plan.effective_dense(self.dense_from)
        self._cached = set(plan.cached_nodes(self.dense_from))
        self._last_use = {}
        for i, node in enumerate(plan.nodes):
            for a in node.all_input_nodes:
                self._last_use[a] = i
        self._ref: Dict[fx.Node, torch.Tensor] = {}
        self._consts: Dict[fx.Node, object] = {}
        self._input = next(n for n in plan.nodes if plan.infos[n].kind == "input")
        self._ref_input = ref.detach().clone()  # the base of patch inputs (run_patch, step_patch)
        with torch.no_grad():
            self.reference_output = self._reference_pass(ref)
        self.cache_bytes = sum(t.numel() * t.element_size() for t in (*self._ref.values(), self._ref_input))

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

    def _execute(self, inputs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, states=None, patch: bool = False):
        """``lo, hi``: ``[B, nd]``, or ``[B, K, nd]`` (several boxes per row: split or merged)."""
        row_of = list(range(inputs.shape[0]))
        if lo.dim() == 3:
            split = None
            if lo.shape[1] > 1:
                split = choose_split(self.plan, lo, hi, states is not None, self._cap_fn(), self.dense_from)
            lo, hi, row_of = split if split is not None else (*merge_parts(lo, hi), row_of)
        self.last_virtual_rows = len(row_of)
        threads = torch.get_num_threads()
        try:
            return self._execute_nodes(inputs, lo, hi, states, threads, patch, row_of)
        finally:
            torch.set_num_threads(threads)

    def _work(self, node, info, boxes, rows: int, virtual: int) -> float:
        """FLOPs (at least one per element) of ``node`` for the batch."""
        if self._eff[node]:
            return rows * info.dense_flops
        per = max(info.flops_per_position, float(info.shape[0]) if info.shape else 1.0)
        return virtual * per * math.prod(boxes[node][1])

    def _input_value(self, inputs, starts: List[List[int]], size, states, patch: bool, row_of) -> _Patched:
        """The input node: full rows, or ``patch`` rows over the reference (or chain) input;
        chain input states take the rows' new box values."""
        base = self._ref_input if states is None else states[self._input]
        if states is not None:
            for r, st in enumerate(starts):
                box = _slices(st, [s + n for s, n in zip(st, size)])
                base[row_of[r]][box] = inputs[r] if patch else inputs[row_of[r]][box]
            return _Patched(None, starts, size, base if patch else inputs, overlay=False)
        return _Patched(inputs, starts, size, base, overlay=True) if patch else \
            _Patched(None, starts, size, inputs, overlay=False)

    def _execute_nodes(self, inputs, lo, hi, states, threads: int, patch: bool, row_of: List[int]):
        plan, rows = self.plan, inputs.shape[0]
        current = threads
        boxes = plan.propagate(lo, hi, self._cap_fn(), self.dense_from)
        env: Dict[fx.Node, object] = {}
        dense: Dict[fx.Node, torch.Tensor] = {}

        def as_dense(n):
            v = env[n]
            if not isinstance(v, _Patched):
                return v
            if n not in dense:
                dense[n] = _densify(v, rows, row_of)
            return dense[n]

        for i, node in enumerate(plan.nodes):
            info = plan.infos[node]
            if info.kind == "input":
                starts, size = boxes[node]
                env[node] = self._input_value(inputs, starts.tolist(), size, states, patch, row_of)
            elif info.kind == "const":
                env[node] = self._consts[node]
            elif node.op == "output":
                return fx.node.map_arg(node.args[0], as_dense)
            else:
                work = self._work(node, info, boxes, rows, len(row_of))
                want = threads if work >= self.min_parallel_flops else 1
                if want != current:
                    torch.set_num_threads(want)
                    current = want
                env[node] = (self._call_with(node, as_dense) if self._eff[node]
                             else self._patched(node, info, env, boxes, states, row_of))
            self._free(env, node, i)
            for a in node.all_input_nodes:
                if a not in env:
                    dense.pop(a, None)
        raise AssertionError("graph without output")

    def _patched(self, node, info, env, boxes, states, row_of) -> _Patched:
        starts_t, size = boxes[node]
        starts = starts_t.tolist()
        if info.kind == "spatial":
            reg_starts, reg_size = info.window.input_region(starts_t, size)
            region = _gather(env[info.tensor_args[0]], reg_starts.tolist(), reg_size, info.pad_value, row_of)
            data = info.run_region(region)
        else:
            def value_of(n):
                v = env[n]
                if not isinstance(v, _Patched):
                    return v
                return v.data if info.kind == "unary" and v.data is not None else _gather(v, starts, size, 0.0, row_of)
            data = self._call_with(node, value_of)
        if node not in self._cached:
            return _Patched(data, starts, size, None, overlay=True)
        if states is None:
            return _Patched(data, starts, size, self._ref[node], overlay=True)
        state = states[node]
        for r, st in enumerate(starts):
            state[row_of[r]][_slices(st, [s + n for s, n in zip(st, size)])] = data[r]
        return _Patched(data, starts, size, state, overlay=False)

    # -- public entry points -------------------------------------------------------------------
    def _check(self, inputs: torch.Tensor, boxes):
        if not isinstance(inputs, torch.Tensor) or tuple(inputs.shape[1:]) != self.plan.input_shape:
            got = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else type(inputs).__name__
            raise ValueError(f"inputs must have shape (B, {', '.join(map(str, self.plan.input_shape))}), got {got}")
        return box_parts(boxes, inputs.shape[0], self.plan.nd)

    def run(self, inputs: torch.Tensor, boxes) -> torch.Tensor:
        """Model outputs for ``inputs`` ``(B, C, *S)``, where row ``b`` differs from the reference
        only inside ``boxes[b]`` (``[B, nd, 2]`` of ``[start, stop)`` per spatial dim, or
        ``[B, K, nd, 2]``: several boxes per row, recomputed separately or as their bounding box,
        whichever the plan predicts cheaper and keeps exact: ``last_virtual_rows`` says how many
        boxes the last call recomputed).

        Exact (to float rounding) unless ``threshold`` is set; a wrong box gives wrong outputs.
        """
        lo, hi = self._check(inputs, boxes)
        with torch.no_grad():
            return self._execute(inputs, lo, hi)

    def _check_patch(self, patch: torch.Tensor, starts):
        shape = self.plan.input_shape
        if not isinstance(patch, torch.Tensor) or patch.dim() != len(shape) + 1 or patch.shape[1] != shape[0]:
            got = tuple(patch.shape) if isinstance(patch, torch.Tensor) else type(patch).__name__
            raise ValueError(f"patch must have shape (B, {shape[0]}, *size), got {got}")
        st = torch.as_tensor(starts, dtype=torch.int64).cpu()
        size = torch.tensor(patch.shape[2:], dtype=torch.int64)
        if tuple(st.shape) != (patch.shape[0], self.plan.nd):
            raise ValueError(f"starts must have shape [{patch.shape[0]}, {self.plan.nd}], got {tuple(st.shape)}")
        if bool((st < 0).any()) or bool((st + size > torch.tensor(shape[1:])).any()):
            raise ValueError(f"starts must place the patch inside the map {tuple(shape[1:])}, got {st.tolist()}")
        return st, st + size

    def run_patch(self, patch: torch.Tensor, starts) -> torch.Tensor:
        """As :meth:`run` for rows that equal the reference except inside the box at ``starts``
        (``[B, nd]``) of ``patch``'s size, where row ``b`` is ``patch[b]`` (``[B, C, *size]``):
        the full perturbed inputs are never built."""
        lo, hi = self._check_patch(patch, starts)
        with torch.no_grad():
            return self._execute(patch, lo, hi, patch=True)

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
        refs = {**self._ref, self._input: self._ref_input}
        return {n: t.expand(chains, *t.shape[1:]).clone() for n, t in refs.items()}

    def step(self, states: Dict[fx.Node, torch.Tensor], inputs: torch.Tensor, boxes) -> torch.Tensor:
        """Advance each chain: row ``b`` of ``inputs`` differs from that chain's previous input only
        inside ``boxes[b]``; ``states`` are updated in place. Returns the model outputs."""
        lo, hi = self._check(inputs, boxes)
        rows = next(iter(states.values())).shape[0] if states else inputs.shape[0]
        if inputs.shape[0] != rows:
            raise ValueError(f"inputs must have one row per chain ({rows}), got {inputs.shape[0]}")
        with torch.no_grad():
            return self._execute(inputs, lo, hi, states)

    def step_patch(self, states: Dict[fx.Node, torch.Tensor], patch: torch.Tensor, starts) -> torch.Tensor:
        """As :meth:`step`, with each chain's new input given only inside the box at ``starts``
        (``[B, nd]``) as ``patch[b]`` (``[B, C, *size]``); outside it the chain's input is kept."""
        lo, hi = self._check_patch(patch, starts)
        if patch.shape[0] != states[self._input].shape[0]:
            raise ValueError(f"patch must have one row per chain ({states[self._input].shape[0]}), got {patch.shape[0]}")
        with torch.no_grad():
            return self._execute(patch, lo, hi, states, patch=True)
