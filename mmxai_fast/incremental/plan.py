"""The incremental plan of a model: a ``torch.fx`` trace in which every node is classified by how a
changed input box propagates through it (Krypton, Nakandala et al., SIGMOD 2019, for 2D; here 2D
and 3D).

Kinds: ``input`` (the placeholder), ``const`` (no dependence on the input), ``spatial`` (conv and
pooling: the box grows by the receptive field), ``unary`` (per-position: activations, eval-mode
BatchNorm, ops with constants), ``binary`` (elementwise between two activations: residual
additions), ``cat`` (channel concatenation, DenseNet), and ``dense``: global pooling, flatten,
linear layers and everything the plan does not understand, with the reason. From the first dense
node on, the rest of the graph runs densely on the materialised activations; nothing is ever
approximated silently.
"""
from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from .boxes import Window, affected_output, boxes_tensor, common_box, union_box

_UNARY_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.ELU, nn.SELU, nn.CELU, nn.GELU, nn.SiLU, nn.Mish,
                  nn.Sigmoid, nn.Tanh, nn.Softplus, nn.Hardswish, nn.Hardsigmoid, nn.Hardtanh, nn.PReLU,
                  nn.Identity)
_DROPOUT = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)
_UNARY_FUNCTIONS = {torch.relu, F.relu, torch.sigmoid, torch.tanh, F.gelu, F.silu, F.leaky_relu, F.elu,
                    F.relu6, F.hardtanh, torch.nn.functional.mish}
_UNARY_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "float", "half", "bfloat16"}
_BINARY = {operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_CONVS = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_MAX_POOLS = {1: nn.MaxPool1d, 2: nn.MaxPool2d, 3: nn.MaxPool3d}
_AVG_POOLS = {1: nn.AvgPool1d, 2: nn.AvgPool2d, 3: nn.AvgPool3d}
_ADAPTIVE = (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
             nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d)
GLOBAL = "global"  # reason category: the box covers the whole map from here on (expected tail)


@dataclass
class NodeInfo:
    """How one fx node is executed incrementally."""

    node: fx.Node
    kind: str
    shape: Optional[Tuple[int, ...]] = None  # output shape of one example
    window: Optional[Window] = None
    pad_value: float = 0.0
    run_region: Optional[Callable] = None  # spatial: the op with padding 0 on a gathered region
    flops_per_position: float = 0.0  # per output position of one example
    dense_flops: float = 0.0  # whole output of one example
    reason: str = ""
    category: str = ""
    tensor_args: List[fx.Node] = field(default_factory=list)


def _tup(v, nd: int) -> Tuple[int, ...]:
    return tuple(v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _numel(shape) -> int:
    return math.prod(shape) if shape is not None else 0


class IncrementalPlan:
    """Trace ``model`` with ``torch.fx`` and classify every node (see the module docstring).

    Use :meth:`from_module`. ``plan.unsupported`` lists ``(node, reason)`` of the layers where the
    plan falls back to dense evaluation although the map is not yet global; ``plan.report()`` is a
    readable summary.
    """

    def __init__(self, gm: fx.GraphModule, infos: Dict[fx.Node, NodeInfo], nd: int, input_shape: Tuple[int, ...]):
        self.gm, self.infos, self.nd, self.input_shape = gm, infos, nd, input_shape
        self.nodes = list(gm.graph.nodes)
        self.modules = dict(gm.named_modules())

    @classmethod
    def from_module(cls, model: nn.Module, example_input: torch.Tensor) -> "IncrementalPlan":
        """Args:
            model: an ``nn.Module`` in eval mode taking one ``(N, C, *S)`` tensor, ``S`` 1-3 dims.
            example_input: ``(N, C, *S)`` input with the shape the runner will see.

        Raises:
            ValueError: bad ``example_input``; TypeError: the model cannot be traced by torch.fx.
        """
        if not isinstance(example_input, torch.Tensor) or not 3 <= example_input.dim() <= 5:
            got = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else type(example_input).__name__
            raise ValueError(f"example_input must be a (N, C, *S) tensor with 1-3 spatial dims, got {got}")
        try:
            gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
        except Exception as exc:  # noqa: BLE001 - fx raises many types
            raise TypeError(f"model {type(model).__name__} cannot be traced by torch.fx: {exc}") from exc
        placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"model must take exactly one input tensor, got {len(placeholders)} placeholders")
        with torch.no_grad():
            ShapeProp(gm).propagate(example_input[:1])
        nd = example_input.dim() - 2
        infos: Dict[fx.Node, NodeInfo] = {}
        modules = dict(gm.named_modules())
        for node in gm.graph.nodes:
            infos[node] = _classify(node, infos, modules, nd)
        return cls(gm, infos, nd, tuple(example_input.shape[1:]))

    # -- static analysis ---------------------------------------------------------------------
    def effective_dense(self, dense_from: Optional[int] = None) -> Dict[fx.Node, bool]:
        """Whether each node runs densely (its kind, a dense argument, or at/after ``dense_from``)."""
        out: Dict[fx.Node, bool] = {}
        for i, node in enumerate(self.nodes):
            info = self.infos[node]
            if info.kind in ("input", "const"):
                out[node] = False
                continue
            out[node] = (info.kind == "dense" or (dense_from is not None and i >= dense_from)
                         or any(out[a] for a in info.tensor_args))
        return out

    def cached_nodes(self, dense_from: Optional[int] = None) -> List[fx.Node]:
        """Nodes whose reference activation must be cached: incremental nodes read by a consumer
        that needs positions outside their box (halo, union or densification)."""
        eff = self.effective_dense(dense_from)
        cached = []
        for node in self.nodes:
            info = self.infos[node]
            if info.kind in ("input", "const", "dense") or eff[node]:
                continue
            if any(eff[u] or self.infos[u].kind != "unary" for u in node.users):
                cached.append(node)
        return cached

    def cache_bytes(self, dense_from: Optional[int] = None, itemsize: int = 4) -> int:
        """Bytes of the cached activations plus the reference input (the base of patch inputs)."""
        shapes = [self.infos[n].shape for n in self.cached_nodes(dense_from)] + [self.input_shape]
        return sum(_numel(shape) * itemsize for shape in shapes)

    @property
    def unsupported(self) -> List[Tuple[str, str]]:
        eff = self.effective_dense()
        return [(n.name, self.infos[n].reason) for n in self.nodes
                if self.infos[n].kind == "dense" and self.infos[n].category != GLOBAL and n.op != "output"
                and not any(eff[a] for a in self.infos[n].tensor_args)]

    def report(self) -> str:
        eff = self.effective_dense()
        frontier = [n for n in self.nodes if eff[n] and not any(eff[a] for a in self.infos[n].tensor_args)]
        lines = [f"incremental plan: {sum(not eff[n] for n in self.nodes)} incremental nodes, "
                 f"{sum(eff.values())} dense nodes"]
        lines += [f"  dense from {n.name} ({n.target}): {self.infos[n].reason}" for n in frontier]
        return "\n".join(lines)

    # -- boxes and cost ------------------------------------------------------------------------
    def propagate(self, lo: torch.Tensor, hi: torch.Tensor, cap_fn: Optional[Callable] = None,
                  dense_from: Optional[int] = None) -> Dict[fx.Node, Tuple[torch.Tensor, Tuple[int, ...]]]:
        """Per incremental node the recomputed box ``(starts [B, nd], size)`` for input boxes
        ``[lo, hi)``; ``cap_fn(shape)`` optionally caps box sides (projective-field threshold)."""
        eff = self.effective_dense(dense_from)
        boxes: Dict[fx.Node, Tuple[torch.Tensor, Tuple[int, ...]]] = {}
        for node in self.nodes:
            info = self.infos[node]
            if info.kind == "input":
                boxes[node] = common_box(lo, hi, self.input_shape[1:])
            elif info.kind in ("const", "dense") or eff[node]:
                continue
            elif info.kind == "spatial":
                starts, size = boxes[info.tensor_args[0]]
                a, b = affected_output(info.window, starts, size, info.shape[1:])
                boxes[node] = common_box(a, b, info.shape[1:], cap_fn(info.shape[1:]) if cap_fn else None)
            elif info.kind == "unary":
                boxes[node] = boxes[info.tensor_args[0]]
            else:  # binary, cat
                boxes[node] = union_box([boxes[a] for a in info.tensor_args], info.shape[1:])
        return boxes

    @property
    def dense_flops(self) -> float:
        """FLOPs of one dense forward pass of one example (conv, pooling, linear; 1 per element else)."""
        return float(sum(i.dense_flops for i in self.infos.values()))

    def box_flops(self, lo: torch.Tensor, hi: torch.Tensor, cap_fn=None, dense_from=None) -> float:
        """FLOPs per row of the incremental (box) part of the pass for input boxes ``[lo, hi)``."""
        prop = self.propagate(lo, hi, cap_fn, dense_from)
        return sum(self.infos[n].flops_per_position * math.prod(size) for n, (_, size) in prop.items()
                   if self.infos[n].kind != "input")

    def incremental_flops(self, boxes, cap_fn=None, dense_from=None) -> float:
        """Mean FLOPs per row of the incremental pass for ``boxes`` ([B, nd, 2])."""
        lo, hi = boxes_tensor(boxes, len(boxes), self.nd)
        eff = self.effective_dense(dense_from)
        dense = sum(info.dense_flops for node, info in self.infos.items() if eff[node])
        return dense + self.box_flops(lo, hi, cap_fn, dense_from)

    def predicted_speedup(self, boxes, cap_fn=None, dense_from=None) -> float:
        """Dense FLOPs over incremental FLOPs for rows changed in ``boxes`` (``[B, nd, 2]``)."""
        return self.dense_flops / max(self.incremental_flops(boxes, cap_fn, dense_from), 1.0)


def _shape(node) -> Optional[Tuple[int, ...]]:
    meta = node.meta.get("tensor_meta")
    if meta is None or not hasattr(meta, "shape"):
        return None
    return tuple(meta.shape[1:])


def _spatial(info: NodeInfo, nd: int) -> bool:
    return info.shape is not None and len(info.shape) == nd + 1


def _classify(node: fx.Node, infos: Dict[fx.Node, NodeInfo], modules, nd: int) -> NodeInfo:
    shape = _shape(node)
    tensor_args = [a for a in node.all_input_nodes if infos[a].kind != "const"]
    info = NodeInfo(node, "dense", shape, tensor_args=tensor_args)
    numel = _numel(shape)
    info.dense_flops = float(numel)
    if node.op == "placeholder":
        info.kind = "input"
        return info
    if node.op == "get_attr" or (node.op != "output" and not tensor_args):
        info.kind = "const"
        info.dense_flops = 0.0
        return info
    if node.op == "output":
        info.reason, info.category, info.dense_flops = "model output", GLOBAL, 0.0
        return info
    if not _spatial(info, nd) or any(not _spatial(infos[a], nd) for a in tensor_args):
        info.reason = f"output shape {shape} is not (C, *S) with {nd} spatial dims"
        info.category = GLOBAL
        if node.op == "call_module" and isinstance(modules[node.target], nn.Linear):
            lin = modules[node.target]
            info.dense_flops = 2.0 * lin.in_features * numel
        return info
    if any(infos[a].shape[1:] != shape[1:] for a in tensor_args) and not _is_spatial_node(node, modules, nd):
        info.reason = "arguments with different spatial shapes"
        return info
    reason = _inplace_reason(node, modules)
    if reason:
        info.reason = reason
        return info
    if node.op == "call_module":
        _classify_module(info, modules[node.target], nd, infos)
    elif node.op == "call_function":
        _classify_call(info, infos, nd, _UNARY_FUNCTIONS, _BINARY)
    elif node.op == "call_method":
        _classify_call(info, infos, nd, _UNARY_METHODS, _BINARY_METHODS)
    if info.kind == "dense" and not info.reason:
        info.reason = f"{node.op} {node.target} is not supported incrementally"
    return info


def _is_spatial_node(node, modules, nd) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], (_CONVS[nd], _MAX_POOLS[nd], _AVG_POOLS[nd], *_ADAPTIVE))


def _inplace_reason(node: fx.Node, modules) -> str:
    inplace = node.kwargs.get("inplace", False) is True
    if node.op == "call_module":
        inplace = inplace or getattr(modules[node.target], "inplace", False) is True
    if node.op == "call_method" and str(node.target).endswith("_"):
        inplace = True
    if inplace and any(len(a.users) > 1 for a in node.all_input_nodes):
        return "in-place op on a value that other nodes also read"
    return ""


def _per_position_const(info: NodeInfo) -> bool:
    """A constant that broadcasts per channel (never varies along the spatial dims)."""
    return info.shape is None or all(s == 1 for s in info.shape[1:]) or _numel(info.shape) == 1


def _classify_norm(info: NodeInfo, mod: nn.Module, channels: int) -> None:
    """Batch/instance norm: per position only in eval mode with running statistics."""
    if mod.training:
        info.reason = f"{type(mod).__name__} in training mode (batch statistics)"
    elif not mod.track_running_stats or mod.running_mean is None:
        info.reason = f"{type(mod).__name__} without running statistics normalises over the whole map"
    else:
        info.kind, info.flops_per_position = "unary", 2.0 * channels


def _classify_module(info: NodeInfo, mod: nn.Module, nd: int, infos) -> None:
    positions = _numel(info.shape[1:])
    channels = info.shape[0]
    if isinstance(mod, _CONVS[nd]):
        if mod.padding_mode != "zeros" or isinstance(mod.padding, str):
            info.reason = f"conv padding {mod.padding!r} / padding_mode {mod.padding_mode!r} (only explicit zero padding)"
            return
        info.kind, info.window = "spatial", Window(_tup(mod.kernel_size, nd), _tup(mod.stride, nd),
                                                   _tup(mod.padding, nd), _tup(mod.dilation, nd))
        conv = getattr(F, f"conv{nd}d")
        info.run_region = lambda x, m=mod: conv(x, m.weight, m.bias, m.stride, 0, m.dilation, m.groups)
        info.flops_per_position = 2.0 * (mod.in_channels // mod.groups) * math.prod(info.window.kernel) * mod.out_channels
    elif isinstance(mod, (_MAX_POOLS[nd], _AVG_POOLS[nd])):
        _classify_pool(info, mod, nd, infos)
    elif isinstance(mod, _UNARY_MODULES):
        info.kind, info.flops_per_position = "unary", float(channels)
    elif isinstance(mod, _DROPOUT):
        if mod.training:
            info.reason = "dropout in training mode"
        else:
            info.kind = "unary"
    elif isinstance(mod, (nn.modules.batchnorm._BatchNorm, nn.modules.instancenorm._InstanceNorm)):
        _classify_norm(info, mod, channels)
    elif isinstance(mod, _ADAPTIVE):
        in_shape = infos[info.tensor_args[0]].shape
        if in_shape == info.shape:
            info.kind = "unary"
        else:
            info.reason, info.category = f"{type(mod).__name__} to {tuple(info.shape[1:])}: global pooling", GLOBAL
    elif isinstance(mod, (nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)):
        info.reason = f"{type(mod).__name__} normalises over positions: not per-position"
    info.dense_flops = max(info.dense_flops, info.flops_per_position * positions)


def _classify_pool(info: NodeInfo, mod: nn.Module, nd: int, infos) -> None:
    if getattr(mod, "return_indices", False):
        info.reason = "max pooling with return_indices"
        return
    kernel, stride = _tup(mod.kernel_size, nd), _tup(mod.stride if mod.stride is not None else mod.kernel_size, nd)
    padding, dilation = _tup(mod.padding, nd), _tup(getattr(mod, "dilation", 1), nd)
    is_max = isinstance(mod, _MAX_POOLS[nd])
    in_shape = infos[info.tensor_args[0]].shape[1:]
    floor_shape = tuple((n + 2 * p - d * (k - 1) - 1) // s + 1
                        for n, p, d, k, s in zip(in_shape, padding, dilation, kernel, stride))
    if not is_max:
        if mod.ceil_mode and floor_shape != tuple(info.shape[1:]):
            info.reason = "average pooling whose ceil_mode windows are cropped (position-dependent divisor)"
            return
        if any(padding) and not mod.count_include_pad:
            info.reason = "average pooling with count_include_pad=False (position-dependent divisor)"
            return
    info.kind, info.window = "spatial", Window(kernel, stride, padding, dilation)
    info.pad_value = float("-inf") if is_max else 0.0
    if is_max:
        pool = getattr(F, f"max_pool{nd}d")
        info.run_region = lambda x, k=kernel, s=stride, d=dilation: pool(x, k, s, 0, d)
    else:
        pool = getattr(F, f"avg_pool{nd}d")
        div = mod.divisor_override
        info.run_region = (lambda x, k=kernel, s=stride: pool(x, k, s, 0)) if div is None else \
            (lambda x, k=kernel, s=stride, v=div: pool(x, k, s, 0, divisor_override=v))
    info.flops_per_position = float(info.shape[0] * math.prod(kernel))


def _classify_elementwise(info: NodeInfo, infos, nd: int, binary: bool) -> None:
    consts = [a for a in info.node.all_input_nodes if infos[a].kind == "const"]
    if any(not _per_position_const(infos[c]) for c in consts):
        info.reason = "elementwise op with a constant that varies over positions"
        return
    if len(info.tensor_args) == 1:
        info.kind = "unary"
    elif binary and len(info.tensor_args) == 2:
        info.kind = "binary"
    else:
        return
    info.flops_per_position = float(info.shape[0])


def _classify_call(info: NodeInfo, infos, nd: int, unary, binary) -> None:
    """call_function / call_method: elementwise ops and channel concatenation."""
    target = info.node.target
    if target in unary or target in binary:
        _classify_elementwise(info, infos, nd, binary=target in binary)
    elif target is torch.cat:
        dim = info.node.kwargs.get("dim", info.node.args[1] if len(info.node.args) > 1 else 0)
        if dim in (1, -nd - 1) and all(infos[a].kind != "const" for a in info.node.all_input_nodes):
            info.kind = "cat"
        else:
            info.reason = f"concatenation along dim {dim} (only channels, dim 1)"
