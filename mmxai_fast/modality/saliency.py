"""Saliency aggregates (Yi et al.; background.md section 4): sums of ``|dL/dx|`` per modality and
per z-slice, once (:func:`saliency_aggregates`) or accumulated over training iterations
(:class:`CumulativeSaliency`, a gradient hook on the input: no training framework needed).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, List, Optional, Tuple

import torch
from captum._utils.common import _run_forward
from torch import Tensor

from .._validation import require_floating, require_tensor
from ._layout import channels_per_modality, check_num_modalities, normalized_dim

__all__ = ["SaliencyAggregates", "saliency_aggregates", "aggregate_abs_gradient", "CumulativeSaliency"]


def aggregate_abs_gradient(grad: Tensor, num_modalities: int, *, channel_dim: int = 1,
                           slice_dim: Optional[int] = None) -> Tensor:
    """Sums of ``|grad|`` per example, modality and z-slice.

    Args:
        grad: ``(N, C, ...)`` gradient of a loss w.r.t. the input, ``C = M * S`` channels at
            ``channel_dim`` (modality-major).
        num_modalities: ``M``.
        channel_dim: dim of the channels.
        slice_dim: None: the ``S`` channels of each modality are its z-slices (2.5D input, e.g.
            4 sequences x 5 slices); an int: the dim holding z (3D input ``(N, C, D, H, W)``:
            ``slice_dim=2``), the channels of a modality are summed.

    Returns:
        float64 ``(N, M, Z)`` with ``Z = S`` or ``grad.shape[slice_dim]``.
    """
    require_tensor(grad, "grad")
    num_modalities = check_num_modalities(num_modalities)
    if grad.dim() < 2:
        raise ValueError(f"grad must be (N, C, ...), got shape {tuple(grad.shape)}")
    channel_dim = normalized_dim(channel_dim, grad.dim(), "channel_dim")
    per_modality = channels_per_modality(grad, num_modalities, channel_dim, "grad")
    g = grad.detach().abs()
    n = g.shape[0]
    if slice_dim is None:
        return g.movedim(channel_dim, 1).reshape(n, num_modalities, per_modality, -1).sum(-1, dtype=torch.float64)
    slice_dim = normalized_dim(slice_dim, grad.dim(), "slice_dim")
    if slice_dim in (0, channel_dim):
        raise ValueError(f"slice_dim must differ from the batch dim and channel_dim, got {slice_dim}")
    depth = g.shape[slice_dim]
    g = g.movedim((channel_dim, slice_dim), (1, 2)).reshape(n, num_modalities, per_modality, depth, -1)
    return g.sum((2, 4), dtype=torch.float64)


@dataclass(frozen=True)
class SaliencyAggregates:
    """Sums of ``|dL/dx|``.

    Attributes:
        per_slice: float64 ``(N, M, Z)``, per example, modality and z-slice.
    """

    per_slice: Tensor

    @property
    def per_modality(self) -> Tensor:
        """float64 ``(N, M)``."""
        return self.per_slice.sum(-1)

    @property
    def total(self) -> Tensor:
        """float64 ``(N,)``, the saliency aggregate of each input."""
        return self.per_slice.sum((1, 2))


def saliency_aggregates(forward_func: Callable, inputs: Tensor, target: Any = None, *, num_modalities: int,
                        loss_fn: Optional[Callable[[Tensor, Any], Tensor]] = None, channel_dim: int = 1,
                        slice_dim: Optional[int] = None,
                        additional_forward_args: Optional[Tuple[Any, ...]] = None) -> SaliencyAggregates:
    """``sum |dL/dx|`` per example, modality and z-slice for one batch.

    Args:
        forward_func: the model.
        inputs: floating ``(N, C, ...)``.
        target: with ``loss_fn``: the loss's target (labels, masks); without: a Captum target
            selecting the output whose sum is ``L`` (like ``captum.attr.Saliency``).
        num_modalities: ``M``.
        loss_fn: ``loss_fn(output, target) -> scalar``, e.g. the training loss; None: see target.
        channel_dim, slice_dim: see :func:`aggregate_abs_gradient`.
        additional_forward_args: extra model arguments.

    Returns:
        :class:`SaliencyAggregates`. The model's parameters get no gradient.
    """
    require_tensor(inputs, "inputs")
    require_floating(inputs, "inputs")
    x = inputs.detach().requires_grad_(True)
    if additional_forward_args is not None and not isinstance(additional_forward_args, tuple):
        additional_forward_args = (additional_forward_args,)
    with torch.enable_grad():
        if loss_fn is None:
            loss = _run_forward(forward_func, (x,), target, additional_forward_args).sum()
        else:
            loss = loss_fn(forward_func(x, *(additional_forward_args or ())), target)
        if not isinstance(loss, Tensor) or loss.numel() != 1:
            raise ValueError(f"the loss must be a scalar tensor, got {getattr(loss, 'shape', type(loss).__name__)}")
        (grad,) = torch.autograd.grad(loss, x)
    return SaliencyAggregates(aggregate_abs_gradient(grad, num_modalities, channel_dim=channel_dim,
                                                     slice_dim=slice_dim))


class CumulativeSaliency:
    """Running sums of ``|dL/dx|`` per modality and z-slice over training iterations.

    Usage, in any training loop::

        tracker = CumulativeSaliency(num_modalities=4)
        for x, y in loader:
            x = tracker.watch(x)              # requires grad; a hook records |dL/dx| on backward
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
        tracker.per_modality, tracker.history  # (M,) sums and (iterations, M) cumulative curve

    Args:
        num_modalities: ``M``.
        channel_dim, slice_dim: see :func:`aggregate_abs_gradient`.

    Attributes:
        per_slice: float64 ``(M, Z)`` sum over examples and iterations (None before the first).
        iterations: number of gradients recorded.
        history: cumulative ``per_modality`` after each iteration.
    """

    def __init__(self, num_modalities: int, *, channel_dim: int = 1, slice_dim: Optional[int] = None) -> None:
        self.num_modalities = check_num_modalities(num_modalities)
        self.channel_dim = channel_dim
        self.slice_dim = slice_dim
        self.reset()

    def reset(self) -> None:
        self.per_slice: Optional[Tensor] = None
        self.iterations = 0
        self._history: List[Tensor] = []

    def update(self, grad: Tensor) -> None:
        """Add one iteration's input gradient ``(N, C, ...)``."""
        batch = aggregate_abs_gradient(grad, self.num_modalities, channel_dim=self.channel_dim,
                                       slice_dim=self.slice_dim).sum(0)
        self.per_slice = batch if self.per_slice is None else self.per_slice + batch.to(self.per_slice.device)
        self.iterations += 1
        self._history.append(self.per_slice.sum(-1))

    def watch(self, inputs: Tensor) -> Tensor:
        """Make ``inputs`` require grad and record its gradient at every backward pass through it."""
        require_tensor(inputs, "inputs")
        require_floating(inputs, "inputs")
        if not inputs.requires_grad:
            inputs = inputs.detach().requires_grad_(True)
        inputs.register_hook(self._hook)
        return inputs

    def _hook(self, grad: Tensor) -> None:
        self.update(grad)  # returns None: the gradient flowing on is unchanged

    @property
    def per_modality(self) -> Optional[Tensor]:
        """float64 ``(M,)``, the cumulative saliency aggregate of each modality."""
        return None if self.per_slice is None else self.per_slice.sum(-1)

    @property
    def history(self) -> Tensor:
        """float64 ``(iterations, M)``: the cumulative per-modality sums after each iteration."""
        if not self._history:
            return torch.zeros((0, self.num_modalities), dtype=torch.float64)
        return torch.stack([h.to(self._history[-1].device) for h in self._history])
