"""Any perturbation method of :mod:`mmxai_fast.attr` with its rows sharded over the ranks of a job.

Every method of the engine evaluates its perturbations as **rows** through
:meth:`~mmxai_fast.attr._evaluator.Evaluator.run`: occlusion windows (Occlusion), ablated
features (FeatureAblation), coalition samples (Lime, KernelShap), permutation steps
(ShapleyValueSampling). Inside :func:`sharded_rows`, rank ``r`` of ``W`` evaluates only the
contiguous rows ``[r R / W, (r + 1) R / W)`` of each such call; the outputs, zero elsewhere, are
added with one ``all_reduce`` (adding zeros is exact), so every rank holds all ``R`` outputs
and finishes the method (attribution sums, linear fit) exactly as a single process would. The
rows themselves are drawn identically on every rank (same code, same torch seed), hence the
result equals the normal, single-process class's to float tolerance (only the model's batch
composition differs) for any world size.

Before the data reduction the ranks :meth:`~mmxai_fast.cohort.distributed.Dist.agree`: when
one rank's model call raised, every rank raises
:class:`~mmxai_fast.cohort.distributed.RankFailed` instead of waiting in the ``all_reduce``.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator, Optional, Tuple

import torch
from torch import Tensor

from ..attr._evaluator import Evaluator, row_runner
from .distributed import Dist

__all__ = ["sharded_rows", "row_share"]


def row_share(num_rows: int, rank: int, world_size: int) -> Tuple[int, int]:
    """Rows ``[start, stop)`` of ``rank``: contiguous, sizes differing by at most one."""
    return num_rows * rank // world_size, num_rows * (rank + 1) // world_size


class _ShardedRunner:
    def __init__(self, dist: Dist) -> None:
        self.dist = dist
        self.rows = 0  # rows this rank evaluated

    def __call__(self, evaluator: Evaluator, num_rows: int, make_rows: Callable[[int, int], Tensor]) -> Tensor:
        start, stop = row_share(num_rows, self.dist.rank, self.dist.world_size)
        local: Optional[Tensor] = None
        error: Optional[BaseException] = None
        try:
            local = evaluator.run_local(stop - start, lambda a, b: make_rows(start + a, start + b))
        except Exception as exc:  # tell the other ranks before they wait for our outputs
            error = exc
        kinds = self.dist.agree(error, None if local is None or stop == start else (str(local.dtype), local.device.type))
        dtype_name, device_type = next((k for k in kinds if k is not None), (str(torch.float32), "cpu"))
        dtype = getattr(torch, dtype_name.replace("torch.", ""))
        assert local is not None and evaluator.row_shape is not None
        device = local.device if stop > start else torch.device(device_type if device_type == "cpu" else self.dist.device)
        full = torch.zeros((num_rows,) + tuple(evaluator.row_shape), dtype=dtype, device=device)
        full[start:stop] = local.to(dtype).reshape((stop - start,) + tuple(evaluator.row_shape))
        self.rows += stop - start
        return self.dist.all_reduce_sum(full)


@contextlib.contextmanager
def sharded_rows(dist: Optional[Dist]) -> Iterator[Optional[_ShardedRunner]]:
    """Within the block, every engine method evaluates its share of rows on this rank and the
    outputs are all-reduced (module docstring); a no-op for None or a single process."""
    if dist is None or not dist.active:
        yield None
        return
    runner = _ShardedRunner(dist)
    with row_runner(runner):
        yield runner
