"""Several changed boxes per row (a feature made of separate parts, a coalition of several features):
recompute them as separate boxes ("virtual rows", one per box, written back into their row) or as
their bounding box, whichever the plan predicts cheaper.

The choice is per row. Separate boxes are exact when each box's recomputation never reads or writes
positions that another box of the same row changes (checked layer by layer on the propagated boxes,
after they were grown to the batch's common size; rows that fail are merged and the rest rechecked).
Against the reference cache (``run``) that is required; in chains (``step``) each layer reads the
row's state, already updated by all its boxes, so any boxes are exact.
"""
from __future__ import annotations

from typing import List, Optional, Set, Tuple

import torch

from .boxes import merge_parts
from .plan import IncrementalPlan

Split = Tuple[torch.Tensor, torch.Tensor, List[int]]  # (lo [V, nd], hi [V, nd], row of each virtual row)


def virtual_rows(lo: torch.Tensor, hi: torch.Tensor) -> Split:
    """One virtual row per non-empty box of ``lo, hi`` (``[B, K, nd]``); a row without any keeps
    one (its first, empty) box."""
    keep = (hi > lo).all(-1)
    keep[:, 0] |= ~keep.any(1)
    rows, boxes = keep.nonzero(as_tuple=True)
    return lo[rows, boxes], hi[rows, boxes], rows.tolist()


def _meet(a_starts: torch.Tensor, a_size, b_starts: torch.Tensor, b_size, same_row: torch.Tensor) -> torch.Tensor:
    """Per virtual row: whether its box of ``a`` meets a box of ``b`` of another virtual row of
    the same row."""
    a_hi = a_starts + torch.tensor(a_size, dtype=torch.int64)
    b_hi = b_starts + torch.tensor(b_size, dtype=torch.int64)
    meet = ((a_starts[:, None] < b_hi[None]) & (b_starts[None] < a_hi[:, None])).all(-1)
    return (meet & same_row).any(1)


def conflicts(plan: IncrementalPlan, vlo: torch.Tensor, vhi: torch.Tensor, row_of: List[int],
              cap_fn=None, dense_from: Optional[int] = None) -> Set[int]:
    """The rows whose virtual rows read or overwrite each other's changed positions."""
    rows = torch.tensor(row_of)
    same_row = (rows[:, None] == rows[None]) & ~torch.eye(len(row_of), dtype=torch.bool)
    bad = torch.zeros(len(row_of), dtype=torch.bool)
    if not bool(same_row.any()):
        return set()
    eff = plan.effective_dense(dense_from)
    boxes = plan.propagate(vlo, vhi, cap_fn, dense_from)
    for node, (starts, size) in boxes.items():
        info = plan.infos[node]
        if info.kind == "input" or eff[node]:
            continue  # the full input rows hold every change
        bad |= _meet(starts, size, starts, size, same_row)
        if info.kind == "spatial":
            reads = [(info.tensor_args[0], *info.window.input_region(starts, size))]
        else:
            reads = [(a, starts, size) for a in info.tensor_args]
        for operand, r_starts, r_size in reads:
            if plan.infos[operand].kind != "input":
                bad |= _meet(r_starts, r_size, *boxes[operand], same_row)
    return set(rows[bad].tolist())


def choose_split(plan: IncrementalPlan, lo: torch.Tensor, hi: torch.Tensor, chains: bool,
                 cap_fn=None, dense_from: Optional[int] = None) -> Optional[Split]:
    """Virtual rows for ``[B, K, nd]`` boxes: the boxes of each row whose separate boxes the plan
    predicts cheaper than their bounding box and that stay exact (always in chains), the bounding
    box of the others; ``None`` when no row is split."""
    vlo, vhi, row_of = virtual_rows(lo, hi)
    mlo, mhi = merge_parts(lo, hi)
    rows = torch.tensor(row_of)
    split = set()
    for r in set(row_of):
        own = rows == r
        k = int(own.sum())
        if k > 1 and plan.box_flops(vlo[own], vhi[own], cap_fn, dense_from) * k < \
                plan.box_flops(mlo[r:r + 1], mhi[r:r + 1], cap_fn, dense_from):
            split.add(r)
    while split:
        parts = [(vlo[i], vhi[i], r) for i, r in enumerate(row_of) if r in split]
        parts += [(mlo[r], mhi[r], r) for r in range(lo.shape[0]) if r not in split]
        clo, chi = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
        crow = [p[2] for p in parts]
        bad = set() if chains else conflicts(plan, clo, chi, crow, cap_fn, dense_from)
        if not bad:
            return clo, chi, crow
        split -= bad
    return None
