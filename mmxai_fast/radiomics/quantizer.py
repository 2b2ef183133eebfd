"""``VectorQuantizer``: the VQ-VAE bottleneck on the engine's ``vq_nearest`` kernel.

Kobayashi et al. (Sci Rep 2021; background.md section 5), after van den Oord et al. (2017):
every position ``i`` of the encoder output ``z_e`` is replaced by its nearest codeword::

    k_i = argmin_k ||z_e,i - e_k||^2,        z_q,i = e_{k_i}

trained with ``||sg[z_e] - z_q||^2 + beta ||z_e - sg[z_q]||^2`` (codebook + commitment) and the
straight-through estimator ``z_e + sg[z_q - z_e]`` (the decoder's gradient is copied onto
``z_e``). With ``ema_decay`` the codebook is not learned by gradient but by exponential moving
averages of cluster sizes and sums (Sonnet's ``VectorQuantizerEMA``, MONAI's ``EMAQuantizer``),
and the loss is the commitment term alone.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..ops.codeword_histogram import codeword_histogram
from ..ops.vq_nearest import vq_nearest
from .._validation import positive_int, require_floating, require_tensor

__all__ = ["VectorQuantizer", "ema_codebook_update"]


def ema_codebook_update(cluster_size: Tensor, cluster_sum: Tensor, counts: Tensor, sums: Tensor,
                        decay: float, epsilon: float) -> Tensor:
    """One EMA step of the codebook (in place on ``cluster_size``/``cluster_sum``).

    ``N_k <- decay N_k + (1 - decay) n_k``, ``m_k <- decay m_k + (1 - decay) s_k`` and
    ``e_k = m_k / N~_k`` with the Laplace-smoothed size ``N~_k = (N_k + eps) / (N + K eps) N``
    (``N = sum_k N_k``), so that an unused codeword never divides by zero.

    Args:
        cluster_size: ``(K,)`` running sizes ``N_k``, updated in place.
        cluster_sum: ``(K, D)`` running sums ``m_k``, updated in place.
        counts: ``(K,)`` positions assigned to each codeword in this batch.
        sums: ``(K, D)`` sum of the encoder outputs assigned to each codeword.
        decay: in ``[0, 1)``.
        epsilon: Laplace smoothing, ``> 0``.

    Returns:
        The new codebook ``(K, D)``.
    """
    cluster_size.mul_(decay).add_(counts.to(cluster_size.dtype), alpha=1 - decay)
    cluster_sum.mul_(decay).add_(sums.to(cluster_sum.dtype), alpha=1 - decay)
    total = cluster_size.sum()
    smoothed = (cluster_size + epsilon) / (total + cluster_size.shape[0] * epsilon) * total
    return cluster_sum / smoothed[:, None]


class VectorQuantizer(nn.Module):
    """Nearest-codeword bottleneck of a VQ-VAE, channel-first like a conv layer.

    Args:
        num_codewords: ``K`` (512 in Kobayashi et al.).
        dim: codeword size ``D``, the channels of ``z`` (64 in Kobayashi et al.).
        beta: commitment weight (0.25 as in van den Oord et al.).
        ema_decay: ``None`` to learn the codebook by gradient (``loss = codebook + beta *
            commitment``); a decay in ``[0, 1)`` (0.99 is usual) to update it in training mode by
            EMA of cluster sizes and sums (``loss = beta * commitment``, no codebook gradient).
        ema_epsilon: Laplace smoothing of the EMA cluster sizes.
        backend: ``vq_nearest`` backend (``None`` = by device).

    The codebook is the parameter ``codebook`` ``(K, D)``, initialised from a standard normal (as
    ``nn.Embedding``, MONAI's default); in EMA mode it has ``requires_grad=False`` and the buffers
    ``ema_cluster_size`` ``(K,)`` and ``ema_cluster_sum`` ``(K, D)`` hold the running statistics.

    Shape:
        ``z``: ``(B, D, *spatial)``, any number of spatial dims (0 included), floating.
        Returns ``(z_q, indices, loss)``: ``z_q`` of ``z``'s shape and dtype holding exactly the
        codewords ``e_{k_i}`` (channel-last strides, a view of the ``(N, D)`` rows), whose
        gradient flows to ``z`` unchanged (straight-through); int64 ``indices``
        ``(B, *spatial)``; scalar ``loss`` (squared errors averaged over all
        ``B * D * prod(spatial)`` elements, as ``F.mse_loss``).

    The nearest codeword is found in the codebook's dtype (``z`` is cast if it differs, e.g. under
    autocast) and ties go to the lowest index. Works under ``torch.compile(fullgraph=True)``:
    ``vq_nearest`` and ``codeword_histogram`` are custom ops with fake implementations.
    """

    # buffers registered only with ``ema_decay`` (nn.Module's ``__getattr__`` cannot say so)
    ema_cluster_size: Tensor
    ema_cluster_sum: Tensor

    def __init__(self, num_codewords: int, dim: int, beta: float = 0.25, ema_decay: Optional[float] = None,
                 ema_epsilon: float = 1e-5, backend: Optional[str] = None) -> None:
        super().__init__()
        self.num_codewords = positive_int(num_codewords, "num_codewords")
        self.dim = positive_int(dim, "dim")
        if not beta >= 0:
            raise ValueError(f"beta must be >= 0, got {beta!r}")
        if ema_decay is not None and not 0 <= ema_decay < 1:
            raise ValueError(f"ema_decay must be None or in [0, 1), got {ema_decay!r}")
        if not ema_epsilon > 0:
            raise ValueError(f"ema_epsilon must be > 0, got {ema_epsilon!r}")
        self.beta = float(beta)
        self.ema_decay = None if ema_decay is None else float(ema_decay)
        self.ema_epsilon = float(ema_epsilon)
        self.backend = backend
        self.codebook = nn.Parameter(torch.randn(num_codewords, dim), requires_grad=ema_decay is None)
        if ema_decay is not None:
            self.register_buffer("ema_cluster_size", torch.zeros(num_codewords))
            self.register_buffer("ema_cluster_sum", self.codebook.detach().clone())

    def extra_repr(self) -> str:
        ema = "" if self.ema_decay is None else f", ema_decay={self.ema_decay}"
        return f"num_codewords={self.num_codewords}, dim={self.dim}, beta={self.beta}{ema}"

    def _check_input(self, z: Tensor) -> None:
        require_tensor(z, "z")
        require_floating(z, "z")
        if z.dim() < 2 or z.shape[1] != self.dim:
            raise ValueError(f"z must have shape (B, D={self.dim}, *spatial), got shape {tuple(z.shape)}")

    def lookup(self, indices: Tensor) -> Tensor:
        """Codewords of ``indices`` ``(B, *spatial)`` as a channel-first ``(B, D, *spatial)`` tensor
        (the decoder input for given indices, e.g. after latent feature ablation)."""
        return F.embedding(indices, self.codebook).movedim(-1, 1)

    def _flatten(self, z: Tensor) -> Tensor:
        # (N, D) rows in the codebook's dtype: a copy for a channel-first z, a view for a
        # channels-last one; kept in the autograd graph (the loss is taken on these rows).
        return z.movedim(1, -1).reshape(-1, self.dim).to(self.codebook.dtype)

    def quantize(self, z: Tensor) -> Tensor:
        """Nearest-codeword indices ``(B, *spatial)`` of ``z`` ``(B, D, *spatial)``; no loss, no update."""
        self._check_input(z)
        indices, _ = vq_nearest(self._flatten(z.detach()), self.codebook.detach(), backend=self.backend)
        return indices.view((z.shape[0],) + z.shape[2:])

    def forward(self, z: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
        """Quantise ``z`` ``(B, D, *spatial)``; see the class docstring.

        Raises:
            TypeError: ``z`` is not a floating tensor.
            ValueError: ``z`` is not ``(B, D, *spatial)`` with this quantizer's ``D``.
        """
        self._check_input(z)
        flat = self._flatten(z)
        flat_indices, _ = vq_nearest(flat.detach(), self.codebook.detach(), backend=self.backend)
        e = F.embedding(flat_indices, self.codebook)  # (N, D); carries the codebook gradient
        learn_codebook = self.ema_decay is None
        if not learn_codebook and self.training:
            self._ema_update(flat.detach(), flat_indices)
        loss = _VQLoss.apply(flat, e, self.beta, learn_codebook)
        spatial_shape = (z.shape[0],) + z.shape[2:]
        z_q = _StraightThrough.apply(z, e.detach().view(spatial_shape + (self.dim,)).movedim(-1, 1).to(z.dtype))
        return z_q, flat_indices.view(spatial_shape), loss

    @torch.no_grad()
    def _ema_update(self, flat: Tensor, flat_indices: Tensor) -> None:
        counts = codeword_histogram(flat_indices, self.num_codewords, backend=self.backend)
        sums = torch.zeros_like(self.codebook).index_add_(0, flat_indices, flat)
        new = ema_codebook_update(self.ema_cluster_size, self.ema_cluster_sum, counts, sums,
                                  self.ema_decay, self.ema_epsilon)
        self.codebook.copy_(new)


class _StraightThrough(torch.autograd.Function):
    """Forward: ``z_q`` exactly; backward: the gradient goes to ``z`` unchanged (the value of
    ``z + sg[z_q - z]`` without its two extra passes and rounding)."""

    @staticmethod
    def forward(ctx, z: Tensor, z_q: Tensor) -> Tensor:
        return z_q

    @staticmethod
    def backward(ctx, grad: Tensor):
        return grad, None


class _VQLoss(torch.autograd.Function):
    """``mean((sg[z] - e)^2) + beta * mean((z - sg[e])^2)`` (``learn_codebook``) or the commitment
    term alone, from one difference: both terms have the value ``m = mean((z - e)^2)``, so the
    loss is ``(1 + beta) m`` (or ``beta m``) with ``dL/dz = 2 beta (z - e) / n`` and
    ``dL/de = 2 (e - z) / n`` (zero without ``learn_codebook``)."""

    @staticmethod
    def forward(ctx, z: Tensor, e: Tensor, beta: float, learn_codebook: bool) -> Tensor:
        diff = (z - e).reshape(-1)  # z and e are contiguous (N, D) rows
        ctx.save_for_backward(diff)
        ctx.beta, ctx.learn_codebook, ctx.row_shape = beta, learn_codebook, z.shape
        mean_sq = torch.dot(diff, diff) / diff.numel()  # one pass (square + mean is two)
        return mean_sq * ((1 + beta) if learn_codebook else beta)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (diff,) = ctx.saved_tensors
        scaled = (diff * (grad * 2 / diff.numel())).view(ctx.row_shape)
        grad_z = scaled * ctx.beta if ctx.needs_input_grad[0] else None
        grad_e = -scaled if ctx.learn_codebook and ctx.needs_input_grad[1] else None
        return grad_z, grad_e, None, None
