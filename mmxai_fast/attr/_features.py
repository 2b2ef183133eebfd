"""Feature masks of the attribution classes: validation, the id map, and the scatter back.

:func:`check_inputs`, :func:`check_baselines` and :func:`check_feature_masks` are the one
validator of inputs, baselines and masks every attribution class uses; :class:`FeatureMap`
holds the masks aligned to their inputs and numbered by column, and
:meth:`FeatureMap.to_input_shapes` is the one scatter back from per-feature values to the inputs'
shapes.
"""
from __future__ import annotations

import math
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from .._validation import require_dense
from ..ops.perturb import MASK_DTYPES
from ._errors import AttributionInputError

__all__ = ["FeatureMap", "check_inputs", "check_baselines", "check_feature_masks", "ids_present",
           "stack_permutations", "check_dense", "check_interpretable_width", "randperm_generator"]


def _broadcastable(shape: Sequence[int], target: Sequence[int]) -> bool:
    shape, target = tuple(shape), tuple(target)
    return len(shape) <= len(target) and all(s in (1, t) for s, t in zip(shape[::-1], target[::-1]))


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


def check_inputs(inputs: Tuple[Tensor, ...]) -> Tuple[Tensor, ...]:
    """Formatted inputs: a non-empty tuple of tensors, each with a batch dim. No common dim 0 is
    required: like Captum, a tensor may hold a variable-length list (sparse features, possibly
    empty); every tensor is repeated whole per perturbation and examples are counted on
    ``inputs[0]``."""
    if not isinstance(inputs, tuple) or not inputs:
        raise AttributionInputError("inputs must be a tensor or a non-empty tuple of tensors")
    for i, inp in enumerate(inputs):
        if not isinstance(inp, Tensor):
            raise AttributionInputError(f"inputs[{i}] must be a torch.Tensor, got {type(inp).__name__}")
        require_dense(inp, f"inputs[{i}]", AttributionInputError)
        if inp.dim() == 0:
            raise AttributionInputError(f"inputs[{i}] must have a batch dim, got a 0-d tensor")
    return inputs


def check_baselines(baselines: Sequence[Any], inputs: Tuple[Tensor, ...]) -> Tuple[Union[Tensor, float], ...]:
    """One number, bool (read as an int) or tensor broadcastable to its input, per input."""
    if len(baselines) != len(inputs):
        raise AttributionInputError(
            f"baselines must give one value per input tensor ({len(inputs)}), got {len(baselines)}")
    checked = []
    for i, (base, inp) in enumerate(zip(baselines, inputs)):
        if isinstance(base, Tensor):
            require_dense(base, f"baselines[{i}]", AttributionInputError)
            if not _broadcastable(base.shape, inp.shape):
                raise AttributionInputError(
                    f"baselines[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                    f"got shape {tuple(base.shape)}")
            if base.device != inp.device:
                raise AttributionInputError(
                    f"baselines[{i}] must be on the device of inputs[{i}] ({inp.device}), got {base.device}")
        elif isinstance(base, bool):  # Captum's default baseline for bool inputs is False
            base = int(base)
        elif not isinstance(base, (int, float)):
            raise AttributionInputError(
                f"baselines[{i}] must be a number, a bool or a tensor, got {type(base).__name__}")
        checked.append(base)
    return tuple(checked)


def check_feature_masks(feature_mask: Sequence[Any], inputs: Tuple[Tensor, ...]) -> List[Tensor]:
    """One integer tensor per input, broadcastable to it, ids >= 0, not all empty; returned
    reshaped to the input's number of dims and on its device."""
    if len(feature_mask) != len(inputs):
        raise AttributionInputError(
            f"feature_mask must give one tensor per input tensor ({len(inputs)}), got {len(feature_mask)}")
    masks = []
    for i, (mask, inp) in enumerate(zip(feature_mask, inputs)):
        if not isinstance(mask, Tensor) or mask.dtype not in MASK_DTYPES:
            got = mask.dtype if isinstance(mask, Tensor) else type(mask).__name__
            raise AttributionInputError(f"feature_mask[{i}] must be an integer tensor, got {got}")
        require_dense(mask, f"feature_mask[{i}]", AttributionInputError)
        if not _broadcastable(mask.shape, inp.shape):
            raise AttributionInputError(
                f"feature_mask[{i}] must be broadcastable to inputs[{i}] {tuple(inp.shape)}, "
                f"got shape {tuple(mask.shape)}")
        masks.append(mask.reshape((1,) * (inp.dim() - mask.dim()) + tuple(mask.shape)).to(inp.device))
    if not any(m.numel() for m in masks) and any(inp.numel() for inp in inputs):  # N = 0: nothing to do
        raise AttributionInputError("feature_mask is empty: no features to perturb")
    for i, mask in enumerate(masks):
        if mask.numel() and int(mask.min()) < 0:
            raise AttributionInputError(f"feature_mask[{i}] ids must be >= 0, got min {int(mask.min())}")
    return masks


#: Widest id space permuted per Shapley sample (a permutation and its lookup: 16 bytes an id).
MAX_PERMUTED_IDS = 2 ** 26


def _bytes(n: int) -> str:
    return f"{n / 2 ** 30:.3g} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.3g} MiB"


def check_dense(value: Any, name: str) -> None:
    """Every tensor of ``value`` (a tensor, a tuple of them, or anything else: ignored) dense."""
    if isinstance(value, Tensor):
        require_dense(value, name, AttributionInputError)
    elif isinstance(value, (tuple, list)):
        for i, item in enumerate(value):
            if isinstance(item, Tensor):
                require_dense(item, f"{name}[{i}]", AttributionInputError)


def check_interpretable_width(masks: Sequence[Tensor], num_features: int, what: str, n_samples: int) -> None:
    """Lime and KernelShap fit Captum's ``max id + 1`` interpretable features, absent ids
    included (their random columns change the fit), so they cannot be compacted: a mask whose id
    space is mostly gaps and wide is refused before any sample is drawn."""
    present = sum(int(ids_present(m).numel()) for m in masks if m.numel())
    if num_features <= 4 * present + 10000:
        return
    high = max(int(m.max()) for m in masks if m.numel())
    raise AttributionInputError(
        f"feature_mask ids must be compact for {what} (Captum fits one interpretable feature per id "
        f"0 .. max id), got id {high}: {num_features} features of which {present} present, about "
        f"{_bytes(5 * n_samples * num_features)} of samples and a fit over {num_features} columns; "
        "renumber the ids to 0 .. K - 1 (torch.unique(mask, return_inverse=True))")


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
        if background_id is not None and (isinstance(background_id, bool) or not isinstance(background_id, int)
                                          or background_id < 0):
            raise AttributionInputError(f"background_id must be None or an int >= 0, got {background_id!r}")
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
                f"0 .. max id), got id {self.max_id}: about {_bytes(16 * width)} per permutation; renumber "
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
