"""Perturbers: a method's rows -> the model's inputs, one call per chunk (see
:data:`~mmxai_fast.attr._evaluator.Perturber`).

- :class:`CoalitionPerturber`: coalition rows ``keep [rows, F]`` over feature masks, one
  :func:`mmxai_fast.ops.perturb` per input tensor (FeatureAblation, Shapley, Lime, KernelShap);
- :class:`WindowPerturber`: global window ids ``[rows]``, one
  :func:`mmxai_fast.ops.occlusion_batch` box copy per window (Occlusion);
- the shuffles of FeaturePermutation live beside it (``feature_permutation.ShufflePerturber``).

Every perturber returns one ``[rows * N_i, ...]`` tensor per input, perturbation-major like
Captum (example ``n`` of row ``r`` at ``r * N_i + n``), written into ``buffer(i, rows)`` when
the evaluator gives one.
"""
from __future__ import annotations

from typing import Callable, List, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from ..ops import OcclusionWindows, occlusion_batch, occlusion_batch_reference, perturb

__all__ = ["CoalitionPerturber", "WindowPerturber", "SMALL_BATCH_NUMEL"]

#: Perturbed batches of at most this many elements are built with one ``torch.where`` instead of
#: the kernel: for tiny inputs the op's dispatch (~0.5 ms a call) costs 10x the select itself.
SMALL_BATCH_NUMEL = 1 << 14

Buffer = Optional[Callable[[int, int], Tensor]]


def _stack_rows(rows: int, batch: Tensor, x: Tensor) -> Tensor:
    return batch.reshape((rows * x.shape[0],) + tuple(x.shape[1:]))


class CoalitionPerturber:
    """``keep [rows, F]`` bool -> inputs with feature ``f`` of copy ``r`` from the input where
    ``keep[r, f]``, else from the baseline. ``masks``: aligned integer masks (``FeatureMap``);
    ``keep_last``: the masks hold one more column than the rows (a declared background), kept in
    every row."""

    def __init__(self, inputs: Tuple[Tensor, ...], baselines: Sequence[Union[Tensor, float]],
                 masks: Sequence[Tensor], keep_last: bool = False) -> None:
        self.inputs, self.baselines, self.masks = inputs, tuple(baselines), tuple(masks)
        self.keep_last = keep_last

    def __call__(self, keep: Tensor, buffer: Buffer = None) -> Tuple[Tensor, ...]:
        rows = keep.shape[0]
        if self.keep_last:
            keep = torch.cat((keep, keep.new_ones((rows, 1))), dim=1)
        batches = []
        for i, (x, mask, base) in enumerate(zip(self.inputs, self.masks, self.baselines)):
            keep_dev = keep.to(x.device)
            if x.is_floating_point() and rows * x.numel() > SMALL_BATCH_NUMEL:
                out = perturb(x, mask, keep_dev, base, validate_ids=False,
                              out=None if buffer is None else buffer(i, rows))
            else:  # integer/bool inputs (the kernel is floating-only) and tiny batches (see above)
                base_t = torch.as_tensor(base, device=x.device).to(x.dtype)
                out = torch.where(keep_dev[:, mask], x, base_t).expand((rows,) + tuple(x.shape))
            batches.append(_stack_rows(rows, out, x))
        return tuple(batches)


class WindowPerturber:
    """Global window ids ``[rows]`` int64 -> inputs with that one window occluded. Windows are
    numbered over ``inputs[0]``'s windows, then ``inputs[1]``'s, ... (Captum 0.9's order)."""

    def __init__(self, inputs: Tuple[Tensor, ...], baselines: Sequence[Union[Tensor, float]],
                 windows: Sequence[OcclusionWindows]) -> None:
        self.inputs, self.baselines, self.windows = inputs, tuple(baselines), tuple(windows)
        counts = [w.num_windows for w in windows]
        self.offsets: List[int] = [0] + list(torch.tensor(counts).cumsum(0)[:-1].tolist())
        self.total_windows = sum(counts)

    def __call__(self, ids: Tensor, buffer: Buffer = None) -> Tuple[Tensor, ...]:
        rows = ids.shape[0]
        return tuple(_stack_rows(rows, self._occluded(i, ids - offset, buffer), x)
                     for i, (x, offset) in enumerate(zip(self.inputs, self.offsets)))

    def _occluded(self, i: int, ids: Tensor, buffer: Buffer) -> Tensor:
        """``[rows, *inputs[i].shape]``: row ``r`` occludes local window ``ids[r]`` of input ``i``
        (ids outside ``[0, num_windows)`` leave that row unperturbed)."""
        x, windows, base = self.inputs[i], self.windows[i], self.baselines[i]
        view = x.reshape(tuple(x.shape[:1]) + windows.input_shape)  # 1-d inputs: (N,) -> (N, 1)
        rows = ids.numel()
        inside = (ids >= 0) & (ids < windows.num_windows)
        if isinstance(base, Tensor) and x.dim() == 1 and base.dim() == 1:
            base = base.unsqueeze(-1)  # (N,) or (1,) against the (N, 1) view
        batch = occlusion_batch if x.is_floating_point() else occlusion_batch_reference
        if bool(inside.all()):
            into = None
            if buffer is not None and x.is_floating_point():  # the hot path: into the reused buffer
                into = buffer(i, rows).view((rows,) + tuple(view.shape))
            out = batch(view, windows, ids.to(x.device), base, **({} if into is None else {"out": into}))
        else:
            out = view.unsqueeze(0).repeat((rows,) + (1,) * view.dim())
            if bool(inside.any()):
                out[inside.to(x.device)] = batch(view, windows, ids[inside].to(x.device), base)
        return out.reshape((rows,) + tuple(x.shape))
