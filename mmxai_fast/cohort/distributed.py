"""The process group, from ``torchrun``'s environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
``MASTER_ADDR``/``MASTER_PORT`` or c10d rendezvous): nothing here assumes one machine. Without
those variables everything runs as a single process (rank 0 of 1) and no group is created."""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional

import torch
import torch.distributed as dist

__all__ = ["Dist", "init_distributed"]


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
            self._timed(dist.all_reduce, on)
            tensor.copy_(on.cpu())
        else:
            self._timed(dist.all_reduce, tensor)
        return tensor

    def all_true(self, flag: bool) -> bool:
        value = torch.tensor([0 if flag else 1], dtype=torch.int64)
        return int(self.all_reduce_sum(value)) == 0

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank."""
        if not self.active:
            return obj
        box = [obj]
        self._timed(dist.broadcast_object_list, box, 0)
        return box[0]

    def gather(self, obj: Any) -> List[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        out: List[Any] = [None] * self.world_size
        self._timed(dist.all_gather_object, out, obj)
        return out

    def barrier(self) -> None:
        if self.active:
            self._timed(dist.barrier)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: Optional[str] = None) -> Dist:
    """Join the job ``torchrun`` started (backend ``nccl`` on GPUs, ``gloo`` on the CPU), or
    return a single-process :class:`Dist` when ``WORLD_SIZE`` is unset or 1.

    Args:
        device: where this rank's model runs; None: ``cuda:LOCAL_RANK`` when CUDA is available,
            else the CPU.
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
        dist.init_process_group(backend=backend)
    return Dist(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local, device=chosen,
                backend=dist.get_backend(), owns_group=owns)
