"""Feature masks of the attribution classes: the id map and the scatter back.

The masks are validated by :func:`mmxai_fast._validation.check_feature_masks` (with the inputs
and baselines: the one validator every attribution class uses); :class:`FeatureMap` holds the
masks aligned to their inputs and numbered by column, and :meth:`FeatureMap.to_input_shapes`
is the one scatter back from per-feature values to the inputs' shapes.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, Optional, Sequence, Tuple

import torch
from torch import Tensor

from .._validation import byte_size, check_background_id, check_feature_masks
from ._errors import AttributionInputError

__all__ = ["FeatureMap", "ids_present", "stack_permutations", "randperm_generator"]


def ids_present(mask: Tensor) -> Tensor:
    """Sorted distinct ids of a non-negative integer mask, as a CPU int64 tensor.

    A bincount (one linear pass) when the largest id is at most a few times the mask's size, the
    usual case for superpixel masks; ``torch.unique`` (a sort, ~100x slower on a 4x64^3 mask)
    otherwise.
    """
    if mask.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    high = int(mask.max())
    if high < 4 * mask.numel() + 1024:
        return torch.bincount(mask.reshape(-1).long(), minlength=high + 1).nonzero().flatten().cpu()
    return torch.unique(mask).long().cpu()


#: Widest id space permuted per Shapley sample (a permutation and its lookup: 16 bytes an id).
MAX_PERMUTED_IDS = 2 ** 26


def randperm_generator(num_features: int, num_samples: int) -> Iterator[Tensor]:
    """Captum's ``_perm_generator`` (the same draws), yielding tensors instead of lists."""
    for _ in range(num_samples):
        yield torch.randperm(num_features)


def stack_permutations(block: Sequence[Any], lookup: Optional[Tensor]) -> Tensor:
    """Permutations (tensors or sequences of ids) -> ``[P, F]`` int64 compact columns: each
    mapped through ``lookup`` with the absent ids (-1) dropped, order kept."""
    perms = torch.stack([p.long().cpu() if isinstance(p, Tensor) else torch.tensor(list(p), dtype=torch.int64)
                         for p in block])
    if lookup is None:
        return perms
    mapped = lookup[perms]
    return mapped[mapped >= 0].reshape(perms.shape[0], -1)


class FeatureMap:
    """Masks aligned to their inputs, numbered by column ``0 .. F - 1``.

    With ``compact_ids=True`` the ids present are renumbered in sorted order (:attr:`feature_ids`
    gives the original ids, :attr:`feature_order` Captum's visiting order: sorted ids of tensor
    0, then the new ids of tensor 1, ...); otherwise the columns are the raw ids and
    ``F = max id + 1``.
    """

    def __init__(self, feature_mask: Sequence[Any], inputs: Tuple[Tensor, ...], *, compact_ids: bool,
                 num_features: Optional[int] = None, background_id: Optional[int] = None) -> None:
        self.inputs = inputs
        masks = check_feature_masks(feature_mask, inputs)
        check_background_id(background_id)
        if not compact_ids:
            self.num_features = max(int(m.max()) for m in masks if m.numel()) + 1
            self.masks = tuple(m.long() for m in masks)
            self.feature_ids = self.feature_order = torch.arange(self.num_features)
        else:
            live = [m for m, inp in zip(masks, inputs) if inp.numel() and m.numel()]
            per_tensor = [ids_present(m) for m in live]
            ids = torch.unique(torch.cat(per_tensor)) if per_tensor else torch.zeros(0, dtype=torch.int64)
            seen = torch.zeros(ids.numel(), dtype=torch.bool)
            order = []
            for uniq in per_tensor:
                pos = torch.searchsorted(ids, uniq)
                order.append(pos[~seen[pos]])
                seen[pos] = True
            self.feature_order = torch.cat(order) if order else torch.zeros(0, dtype=torch.int64)
            self.masks = tuple(self._renumber(m, ids) for m in masks)
            self.num_features, self.feature_ids = max(ids.numel(), 1), ids
        #: The largest id of the masks (Captum's id space is ``0 .. max_id``).
        self.max_id = int(self.feature_ids[-1]) if self.feature_ids.numel() else 0
        self.background_id = background_id
        if num_features is not None:  # rows wider than the ids (Lime's per-example ids)
            self.num_features = num_features
        #: With a declared background: its elements point at column ``num_features`` (one past
        #: the features), which every row keeps; it is no feature, so no row removes it.
        self.has_background = False
        if background_id is not None:
            self._drop_background(background_id, compact_ids)

    def _drop_background(self, background_id: int, compact_ids: bool) -> None:
        if compact_ids:
            found = (self.feature_ids == background_id).nonzero().flatten()
            if not found.numel():
                return
            column = int(found[0])
            self.feature_ids = torch.cat((self.feature_ids[:column], self.feature_ids[column + 1:]))
        else:
            if background_id >= self.num_features:
                return
            column = background_id
            self.feature_ids = torch.cat((self.feature_ids[:column], self.feature_ids[column + 1:]))
        players = self.num_features - 1

        def shift(cols: Tensor) -> Tensor:
            return torch.where(cols == column, players, cols - (cols > column).to(cols.dtype))

        self.masks = tuple(shift(m) for m in self.masks)
        order = self.feature_order
        self.feature_order = shift(order[order != column])
        self.num_features, self.has_background = players, True

    def permutation_space(self, what: str) -> Tuple[int, Optional[Tensor]]:
        """Captum's permutation width (``max id + 1``, less a declared background) and the
        lookup from its ids to :attr:`masks`' compact columns (-1 for ids not present).

        Ids absent from the masks change no input, so their marginals are 0 and dropping them
        from each permutation leaves every present id's marginal as it was: Captum's result
        for the same seed, without the model calls of the absent ids.
        """
        width = self.max_id + 1 - int(self.has_background)
        if width > MAX_PERMUTED_IDS:
            raise AttributionInputError(
                f"feature_mask ids must be at most {MAX_PERMUTED_IDS - 1} for {what} (Captum permutes the ids "
                f"0 .. max id), got id {self.max_id}: about {byte_size(16 * width)} per permutation; renumber "
                "the ids to 0 .. K - 1 (torch.unique(mask, return_inverse=True))")
        ids = self.feature_ids
        if self.has_background:
            ids = ids - (ids > self.background_id).long()
        if ids.numel() == width:
            return width, None
        lookup = torch.full((width,), -1, dtype=torch.int64)
        lookup[ids] = torch.arange(ids.numel())
        return width, lookup

    @property
    def num_columns(self) -> int:
        """Width of the id space of :attr:`masks`: the features, plus the background's column."""
        return self.num_features + int(self.has_background)

    @staticmethod
    def _renumber(mask: Tensor, ids: Tensor) -> Tensor:
        """``mask``'s ids -> their positions in the sorted ``ids`` (ids not in ``ids``, possible
        only in masks of empty inputs, get a neighbour's position)."""
        if mask.numel() == 0:
            return mask.long()
        high = int(mask.max())
        if ids.numel() and high < 4 * mask.numel() + 1024:  # a lookup table: one gather pass
            table = torch.searchsorted(ids, torch.arange(high + 1)).clamp_(max=ids.numel() - 1)
            return table.to(mask.device)[mask.long()]
        return torch.searchsorted(ids.to(mask.device), mask.long().contiguous()).clamp_(max=max(ids.numel() - 1, 0))

    def require_shared(self) -> None:
        """Scalar-per-batch models need masks with first dim 1 (one mask for all examples)."""
        for i, mask in enumerate(self.masks):
            if mask.shape[0] != 1 and mask.numel():  # an empty mask (empty input) holds no feature
                raise AttributionInputError(
                    f"feature_mask[{i}] must have first dim 1 when forward_func returns a scalar "
                    f"per batch (one mask for all examples), got shape {tuple(mask.shape)}")

    def to_input_shapes(self, table: Tensor) -> Tuple[Tensor, ...]:
        """Per-feature values ``[F, *T]`` -> one ``[*T, *inputs[i].shape[1:]]`` tensor per input.

        ``out[i][o, ..., idx] = table[mask_i[o or 0, idx], o, ...]``: ``T[0]`` is aligned with
        the masks' first dim (1 or ``T[0]``), like Captum's broadcasting of output differences
        against feature masks. Results live on each input's device, dtype of ``table``.
        """
        if self.has_background:  # the background is no feature: 0 there
            table = torch.cat((table, table.new_zeros((1,) + tuple(table.shape[1:]))))
        out_dims = tuple(table.shape[1:])
        if not out_dims:
            table, out_dims = table.reshape(-1, 1), (1,)
        lead, inner = out_dims[0], math.prod(out_dims[1:])
        per_feature = table.reshape(table.shape[0], lead, inner)
        results = []
        for i, (mask, inp) in enumerate(zip(self.masks, self.inputs)):
            full = out_dims + tuple(inp.shape[1:])
            if inp.numel() == 0 or mask.numel() == 0:
                results.append(torch.zeros(full, dtype=table.dtype, device=inp.device))
                continue
            if mask.shape[0] not in (1, lead):
                raise AttributionInputError(
                    f"feature_mask[{i}] first dim must be 1 or match the output's first dim ({lead}), "
                    f"got shape {tuple(mask.shape)}")
            values = per_feature.to(inp.device).permute(1, 2, 0)  # [lead, inner, F]
            rest = tuple(mask.shape[1:])
            idx = mask.expand((lead,) + rest).reshape(lead, 1, -1).expand(lead, inner, math.prod(rest))
            gathered = torch.gather(values, 2, idx).reshape(out_dims + rest)
            results.append(gathered.expand(full).contiguous())
        return tuple(results)
