"""Latent feature ablation: the image region each codeword is responsible for (Kobayashi et al. 2021).

For a codeword ``c``, every latent position quantised to ``c`` is replaced by the background
codeword ``b`` (the most frequent codeword outside the body), the latent map is decoded again,
and the per-pixel L1 distance between the two logit maps is the region ``c`` encodes::

    R_c = sum_classes |decoder(e[where(k == c, b, k)]) - decoder(e[k])|

:func:`latent_feature_ablation` does this for many codewords in batched decoder calls. A codeword
that does not occur in an image leaves its latent map unchanged, so its region is exactly zero
there and that (codeword, image) pair is not decoded at all.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence, Union

import torch
from torch import Tensor

from ..ops.codeword_histogram import codeword_histogram
from .histograms import _check_range
from .._validation import int_in_range, positive_int, require_floating, require_integer, require_ndim, require_tensor

__all__ = ["background_codeword", "latent_feature_ablation", "latent_feature_ablation_reference"]


def _latent_body_mask(body_mask: Tensor, indices: Tensor) -> Tensor:
    """``body_mask`` at the latent resolution: a latent cell is inside the body when any pixel of
    its patch is."""
    if body_mask.shape == indices.shape:
        return body_mask
    latent, image = indices.shape[1:], body_mask.shape[1:]
    if (body_mask.dim() != indices.dim() or body_mask.shape[0] != indices.shape[0]
            or any(m % n for n, m in zip(latent, image))):
        raise ValueError(f"body_mask must have the shape of indices {tuple(indices.shape)} or the same batch size "
                         f"and spatial sizes that are multiples of it, got shape {tuple(body_mask.shape)}")
    split = [indices.shape[0]]
    for n, m in zip(latent, image):
        split += [n, m // n]
    return body_mask.reshape(split).amax(dim=tuple(range(2, len(split), 2)))


def background_codeword(indices: Tensor, body_mask: Tensor, num_codewords: Optional[int] = None) -> int:
    """The most frequent codeword outside the body (ties to the lowest index).

    Args:
        indices: integer codeword indices ``(B, *latent)``, e.g. ``(B, 8, 8)``.
        body_mask: bool ``(B, *latent)``, or ``(B, *image)`` at the input resolution with each
            image size a multiple of the latent one (a latent cell then counts as outside the body
            only when its whole patch is).
        num_codewords: ``K`` (default ``max(indices) + 1``).

    Returns:
        The background codeword index.

    Raises:
        TypeError: ``indices`` not integer or ``body_mask`` not bool.
        ValueError: shapes that do not fit, an index outside ``[0, num_codewords)``, or no latent
            position outside the body.
    """
    require_tensor(indices, "indices")
    require_integer(indices, "indices")
    require_tensor(body_mask, "body_mask")
    if body_mask.dtype != torch.bool:
        raise TypeError(f"body_mask must be a bool tensor, got {body_mask.dtype}")
    if indices.dim() < 2:
        raise ValueError(f"indices must have shape (B, *latent) (at least 2 dims), got shape {tuple(indices.shape)}")
    if num_codewords is None:
        num_codewords = int(indices.max()) + 1 if indices.numel() else 1
    num_codewords = positive_int(num_codewords, "num_codewords")
    _check_range(indices, "indices", num_codewords, "num_codewords")
    outside = indices[~_latent_body_mask(body_mask, indices)]
    if outside.numel() == 0:
        raise ValueError("body_mask must leave at least one latent position outside the body, got none")
    return int(codeword_histogram(outside, num_codewords).argmax())  # argmax: first maximum


def _check_ablation_args(indices, codebook, codewords, background):
    require_tensor(indices, "indices")
    require_integer(indices, "indices")
    require_tensor(codebook, "codebook")
    require_floating(codebook, "codebook")
    require_ndim(codebook, "codebook", 2, "(K, D)")
    if indices.dim() < 2:
        raise ValueError(f"indices must have shape (B, *latent) (at least 2 dims), got shape {tuple(indices.shape)}")
    num_codewords = codebook.shape[0]
    _check_range(indices, "indices", num_codewords, "codebook size K")
    if not isinstance(codewords, Tensor):
        codewords = torch.as_tensor(codewords, dtype=None if len(codewords) else torch.int64)
    codewords = codewords.to(indices.device)
    if codewords.dim() != 1 or codewords.is_floating_point() or codewords.dtype == torch.bool:
        raise ValueError(f"codewords must be a 1-D sequence of integer codeword ids, got {codewords.dtype} "
                         f"of shape {tuple(codewords.shape)}")
    _check_range(codewords, "codewords", num_codewords, "codebook size K")
    int_in_range(background, "background", 0, num_codewords, " (codebook size K)")
    return codewords.to(torch.int64)


def _decode(decoder, codebook, indices, batch_size):
    chunks = [decoder(codebook[indices[i:i + batch_size]].movedim(-1, 1))
              for i in range(0, indices.shape[0], batch_size)]
    return torch.cat(chunks)


def latent_feature_ablation_reference(decoder: Callable[[Tensor], Tensor], indices: Tensor, codebook: Tensor,
                                      codewords: Sequence[int], background: int) -> Tensor:
    """Oracle: one codeword at a time, decoding the whole batch each time (see
    :func:`latent_feature_ablation`)."""
    ids = _check_ablation_args(indices, codebook, codewords, background)
    with torch.no_grad():
        original = decoder(codebook[indices].movedim(-1, 1))
        maps = []
        for c in ids.tolist():
            ablated = torch.where(indices == c, background, indices)
            maps.append((decoder(codebook[ablated].movedim(-1, 1)) - original).abs().sum(1))
    return torch.stack(maps) if maps else original.new_zeros((0, original.shape[0]) + original.shape[2:])


def latent_feature_ablation(decoder: Callable[[Tensor], Tensor], indices: Tensor, codebook: Tensor,
                            codewords: Union[Sequence[int], Tensor], background: int, *,
                            logits: Optional[Tensor] = None, batch_size: int = 64,
                            show_progress: bool = False) -> Tensor:
    """Per-pixel L1 logit difference when each codeword is replaced by the background codeword.

    All (codeword, image) pairs in which the codeword occurs are ablated in one index tensor and
    decoded in batches of ``batch_size``; pairs where it does not occur are zero.

    Args:
        decoder: channel-first latents ``(n, D, *latent)`` -> logits ``(n, C, *out)``, e.g.
            ``VQEncoderDecoder.decode``; called under ``torch.no_grad()``. It must treat the rows
            of a batch independently (eval mode).
        indices: integer codeword indices ``(B, *latent)`` of the images.
        codebook: ``(K, D)`` the quantizer's codebook.
        codewords: ``(M,)`` codeword ids to ablate, in ``[0, K)``.
        background: the background codeword (:func:`background_codeword`).
        logits: optional ``decoder`` output for the unablated ``indices`` ``(B, C, *out)``
            (computed when omitted).
        batch_size: rows per decoder call.
        show_progress: tqdm bar over decoder calls.

    Returns:
        ``(M, B, *out)``: ``sum_c |logits_ablated - logits|`` for every codeword and image.

    Raises:
        TypeError: ``indices`` not integer, ``codebook`` not floating.
        ValueError: bad shapes, an index, codeword id or ``background`` outside ``[0, K)``, bad
            ``batch_size``, or ``logits`` not of the decoder's output shape.
    """
    ids = _check_ablation_args(indices, codebook, codewords, background)
    batch_size = positive_int(batch_size, "batch_size")
    num_images = indices.shape[0]
    with torch.no_grad():
        if logits is None:
            logits = _decode(decoder, codebook, indices, batch_size)
        elif not isinstance(logits, Tensor) or logits.dim() < 2 or logits.shape[0] != num_images:
            raise ValueError(f"logits must be the decoder output (B={num_images}, C, *out), got "
                             f"{getattr(logits, 'shape', type(logits).__name__)}")
        out = logits.new_zeros((ids.shape[0], num_images) + logits.shape[2:])
        present = codeword_histogram(indices, codebook.shape[0], batch_dims=1)[:, ids] > 0  # (B, M)
        present &= ids[None] != background
        image_ids, codeword_pos = present.nonzero(as_tuple=True)
        calls = range(0, image_ids.shape[0], batch_size)
        if show_progress:
            from tqdm.auto import tqdm

            calls = tqdm(calls, desc="Latent feature ablation")
        for start in calls:
            rows, pos = image_ids[start:start + batch_size], codeword_pos[start:start + batch_size]
            latent = indices[rows]
            chosen = ids[pos].view((-1,) + (1,) * (latent.dim() - 1))
            ablated = decoder(codebook[torch.where(latent == chosen, background, latent)].movedim(-1, 1))
            out[pos, rows] = (ablated - logits[rows]).abs().sum(1)
    return out
