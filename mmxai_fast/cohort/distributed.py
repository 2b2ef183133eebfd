"""The process group, from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` or c10d rendezvous): nothing here assumes one machine. Without
those variables everything runs as a single process (rank 0 of 1) and no group is created."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, List, Optional, Sequence

import torch
import torch.distributed as dist

__all__ = ["Dist", "RankFailed", "init_distributed"]


class RankFailed(RuntimeError):
    """Raised on every rank when the work of one or more ranks raised (see :meth:`Dist.agree`)."""


@dataclass
class Dist:
    """This process's place in the job, and the collectives the cohort needs. ``comm_s`` sums the
    wall time spent in collectives (the communication cost the scaling benchmark reports)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    backend: Optional[str] = None
    comm_s: float = 0.0
    owns_group: bool = False
    #: process group of the collectives (None: the default group)
    group: Any = None

    @property
    def active(self) -> bool:
        return self.world_size > 1

    def _timed(self, fn, *args):
        start = time.perf_counter()
        try:
            return fn(*args)
        finally:
            self.comm_s += time.perf_counter() - start

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """In-place sum over ranks (moved to the backend's device and back when needed)."""
        if not self.active:
            return tensor
        if self.backend == "nccl" and tensor.device.type != "cuda":
            on = tensor.to(self.device)
            self._timed(lambda: dist.all_reduce(on, group=self.group))
            tensor.copy_(on.cpu())
        else:
            self._timed(lambda: dist.all_reduce(tensor, group=self.group))
        return tensor

    def all_true(self, flag: bool) -> bool:
        value = torch.tensor([0 if flag else 1], dtype=torch.int64)
        return int(self.all_reduce_sum(value)) == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        src = 0 if self.group is None else dist.get_global_rank(self.group, 0)
        self._timed(lambda: dist.broadcast_object_list(box, src, group=self.group))
        return box[0]

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        self._timed(lambda: dist.all_gather_object(out, obj, group=self.group))
        return out

    def agree(self, error: Optional[BaseException], info: Any = None) -> List[Any]:
        """Every rank says whether its part of the work failed (``error``) before the next
        collective on the data, so that no rank waits forever for one that raised.

        Returns every rank's ``info`` (rank order) when none failed; else raises
        :class:`RankFailed` on every rank, naming the failed ranks and their errors (chained to
        ``error`` on a failing rank).
        """
        text = None if error is None else f"{type(error).__name__}: {error}"
        if not self.active:
            if error is not None:
                raise error
            return [info]
        replies = self.gather((text, info))
        failed = [(r, t) for r, (t, _) in enumerate(replies) if t is not None]
        if failed:
            raise RankFailed("; ".join(f"rank {r} failed: {t}" for r, t in failed)) from error
        return [i for _, i in replies]

    def barrier(self) -> None:
        if self.active:
            self._timed(lambda: dist.barrier(group=self.group))

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def subgroup(ranks: Sequence[int], device: Optional[str] = None) -> Optional[Dist]:
    """A :class:`Dist` over the global ``ranks`` of the initialised job (every rank must call
    this, as ``torch.distributed.new_group``); None on the ranks outside it."""
    group = dist.new_group(list(ranks))
    me = dist.get_rank()
    if me not in ranks:
        return None
    return Dist(rank=list(ranks).index(me), world_size=len(ranks), device=torch.device(device or "cpu"),
                backend=dist.get_backend(), group=group)


def init_distributed(device: Optional[str] = None, timeout_s: Optional[float] = None) -> Dist:
    """Join the job ``torchrun`` started (backend ``nccl`` on GPUs, ``gloo`` on the CPU), or
    return a single-process :class:`Dist` when ``WORLD_SIZE`` is unset or 1.

    Args:
        device: where this rank's model runs; None: ``cuda:LOCAL_RANK`` when CUDA is available,
            else the CPU.
        timeout_s: seconds a collective may wait for the other ranks before it raises (a rank
            that died without a word); None: torch's default (30 min for gloo and nccl).
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device is None:
        chosen = torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    else:
        chosen = torch.device(device)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if world <= 1:
        return Dist(device=chosen)
    backend = "nccl" if chosen.type == "cuda" else "gloo"
    owns = not dist.is_initialized()
    if owns:
        if timeout_s is not None and (isinstance(timeout_s, bool) or not timeout_s > 0):
            raise ValueError(f"timeout_s must be None or a number > 0, got {timeout_s!r}")
        dist.init_process_group(backend=backend,
                                timeout=None if timeout_s is None else timedelta(seconds=float(timeout_s)))
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=chosen,
                backend=dist.get_backend(), owns_group=owns)
