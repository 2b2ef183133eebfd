"""Eval-mode BatchNorm folded into the convolution before it, for the Evaluator's model calls.

In eval mode a BatchNorm layer is a per-channel affine map, so ``Conv -> BatchNorm`` equals one
convolution with scaled weights and a shifted bias, and a ``ReLU`` after it can run inside the
same oneDNN primitive (``torch.ops.mkldnn._convolution_pointwise``, the fusion Inductor uses on
the CPU). That removes one or two full passes over every such activation: the layers of a VGG-like
network (conv, BN, ReLU) and the bottleneck of DenseNet layers (1x1 conv, BN, ReLU, 3x3 conv) are
bound by memory traffic on the CPU, not by arithmetic.

:func:`fold_batchnorm` returns a folded deep copy of the model (the caller's model is never
changed) or None with the reason. Opt-in (``fold_batchnorm=True``, ``--fold-batchnorm on``): the
copy, not the caller's object, runs, so state a model keeps in Python attributes during its
forward (call counters, caches) lands on the copy. Only patterns whose data flow is certain are folded: a
``Conv2d``/``Conv3d`` immediately followed by a ``BatchNorm2d``/``BatchNorm3d`` in eval mode with
running statistics, inside an ``nn.Sequential`` whose ``forward`` is the standard one, with no
hooks anywhere in the model. Results agree with the unfolded model to float32 rounding (the
weights are folded in float64).
"""
from __future__ import annotations

import copy
from typing import Any, List, Optional, Tuple, TypeGuard

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["FoldedConv", "fold_batchnorm"]

_PAIRS = ((nn.Conv3d, nn.BatchNorm3d, F.conv3d), (nn.Conv2d, nn.BatchNorm2d, F.conv2d))


class FoldedConv(nn.Module):
    """``relu?(bn(conv(x)))`` of an eval-mode BatchNorm as one convolution."""

    weight: Tensor
    bias: Tensor

    def __init__(self, conv: Any, bn: Any, relu: bool, conv_fn: Any, onednn: Any) -> None:
        super().__init__()
        scale = bn.running_var.double().add(bn.eps).rsqrt()
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        shift = -bn.running_mean.double() * scale
        if bn.bias is not None:
            shift = shift + bn.bias.double()
        if conv.bias is not None:
            shift = shift + conv.bias.double() * scale
        weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
        self.register_buffer("weight", weight.to(conv.weight.dtype).contiguous())
        self.register_buffer("bias", shift.to(conv.weight.dtype))
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.relu, self.conv_fn = relu, conv_fn
        self.onednn = (onednn is not False and self.weight.dtype == torch.float32
                       and torch.backends.mkldnn.is_available())  # the fused primitive can run at all

    def _fused(self, x: Tensor) -> bool:
        return (self.onednn and x.device.type == "cpu" and x.dtype == torch.float32 and x.dim() == self.weight.dim()
                and not (torch.is_grad_enabled() and x.requires_grad) and not torch.compiler.is_compiling())

    def forward(self, x: Tensor) -> Tensor:
        if self._fused(x):
            return torch.ops.mkldnn._convolution_pointwise(x, self.weight, self.bias, self.padding, self.stride,
                                                           self.dilation, self.groups,
                                                           "relu" if self.relu else "none", [], "")
        y = self.conv_fn(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        return F.relu(y) if self.relu else y


def _foldable(conv: Any, bn: Any) -> Optional[Any]:
    """The functional conv of a foldable (conv, bn) pair, else None."""
    for conv_type, bn_type, conv_fn in _PAIRS:
        if (type(conv) is conv_type and isinstance(bn, bn_type) and not bn.training
                and bn.running_mean is not None and bn.running_var is not None
                and conv.padding_mode == "zeros" and isinstance(conv.padding, tuple)
                and bn.num_features == conv.out_channels and conv.weight.is_floating_point()):
            return conv_fn
    return None


def _plain_sequential(module: nn.Module) -> TypeGuard[nn.Sequential]:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def _has_hooks(model: nn.Module) -> bool:
    hooks = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    if any(getattr(nn.modules.module, "_global" + name, None) for name in hooks):
        return True
    return any(getattr(m, name, None) for m in model.modules() for name in hooks)


def _fold_sequential(seq: nn.Sequential, onednn: Any) -> int:
    keys: List[str] = list(seq._modules)
    folded, i = 0, 0
    while i + 1 < len(keys):
        conv, bn = seq._modules[keys[i]], seq._modules[keys[i + 1]]
        conv_fn = _foldable(conv, bn)
        if conv_fn is None:
            i += 1
            continue
        after = seq._modules[keys[i + 2]] if i + 2 < len(keys) else None
        relu = type(after) is nn.ReLU
        seq._modules[keys[i]] = FoldedConv(conv, bn, relu, conv_fn, onednn)
        seq._modules[keys[i + 1]] = nn.Identity()
        if relu:
            seq._modules[keys[i + 2]] = nn.Identity()
        folded, i = folded + 1, i + (3 if relu else 2)
    return folded


def fold_batchnorm(model: Any, onednn: Any = "auto") -> Tuple[Optional[nn.Module], str]:
    """``(folded copy, note)``, or ``(None, why not)`` (module docstring). ``onednn``: the oneDNN
    conv policy (False: the folded convolutions run through ``F.conv*`` and a separate ReLU)."""
    if not isinstance(model, nn.Module):
        return None, "forward_func is not a torch.nn.Module"
    if isinstance(model, torch.jit.ScriptModule):
        return None, "a TorchScript model"
    if any(p.device.type != "cpu" for p in model.parameters()):
        return None, "the model is not on the CPU"
    if _has_hooks(model):
        return None, "the model has hooks (a folded copy would not run them)"

    try:
        folded_model = copy.deepcopy(model)
    except Exception as err:  # noqa: BLE001 - any failure to copy means: call the model as it is
        return None, f"the model could not be copied ({type(err).__name__}: {err})"
    with torch.no_grad():
        count = sum(_fold_sequential(m, onednn) for m in list(folded_model.modules()) if _plain_sequential(m))
    if not count:
        return None, "no Conv -> eval-mode BatchNorm pair inside an nn.Sequential"
    return folded_model, f"{count} BatchNorm layers folded into the convolution before them"
