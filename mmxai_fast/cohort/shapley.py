"""Shapley value sampling with its permutations sharded across ranks, checkpointed and resumable.

Permutation ``p`` of an attribution seeded with ``seed`` is drawn from its own generator
(:func:`~mmxai_fast.cohort.sharding.permutation_seed`), so the set of permutations is the same
whatever the number of ranks; rank ``r`` of ``W`` walks permutations ``r, r + W, r + 2W...``,
the per-feature sums of marginals (and of their squares, float64) are added over ranks with one
``all_reduce`` at the end. The result equals a single-process run to float tolerance (only the
order of the float64 additions and the model's batch composition differ).

Built on the public ops only: :func:`~mmxai_fast.ops.shapley_coalitions` (which features each
evaluation keeps), :func:`~mmxai_fast.ops.perturb` (the perturbed inputs),
:func:`~mmxai_fast.ops.shapley_accumulate` (marginal sums) and plain model calls of ``chunk``
inputs. Every ``checkpoint_every`` permutations a rank saves its partial sums atomically; a
restart with the same arguments resumes from there and gives bit-identical sums (blocks of
permutations are aligned to the start, so the additions happen in the same order).
"""
from __future__ import annotations

import hashlib
import io
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import Tensor

from ..ops import perturb, random_permutations, shapley_accumulate, shapley_coalitions, shapley_prefix_rows, \
    shapley_stats
from ..profiling import phase
from .distributed import Dist
from .manifest import atomic_write_bytes
from .sharding import check_rank, permutation_seed
from .._validation import int_at_least

__all__ = ["ShapleyResult", "sharded_shapley_sampling", "draw_permutations"]


@dataclass
class ShapleyResult:
    """Attributions of :func:`sharded_shapley_sampling`.

    Attributes:
        attributions: float32, shape of ``inputs``: the Shapley value of each voxel's feature.
        stderr: float32, same shape: standard error of each value over the permutations.
        n_permutations: permutations averaged (all ranks).
        model_calls / model_inputs / model_s: this rank's model calls, inputs and seconds in them.
        resumed_permutations: this rank's permutations restored from a checkpoint.
        comm_s: this rank's seconds in the all_reduce.
        wall_s: this rank's wall time.
    """

    attributions: Tensor
    stderr: Tensor
    n_permutations: int
    model_calls: int
    model_inputs: int
    model_s: float
    resumed_permutations: int
    comm_s: float
    wall_s: float


def draw_permutations(seed: int, indices, num_features: int) -> Tensor:
    """``[len(indices), F]`` permutations, row ``i`` drawn from the seed of permutation ``indices[i]``."""
    rows = [random_permutations(1, num_features, generator=torch.Generator().manual_seed(permutation_seed(seed, int(p))))
            for p in indices]
    return torch.cat(rows) if rows else torch.empty((0, num_features), dtype=torch.int64)


def _scalar_outputs(out: Tensor, target: Optional[int], rows: int) -> Tensor:
    if not isinstance(out, Tensor):
        raise ValueError(f"model must return a tensor, got {type(out).__name__}")
    if target is not None and out.dim() >= 2:
        out = out[:, target]
    if out.numel() != rows:
        raise ValueError(f"model output must give one value per input (pass target= for a [N, classes] output), "
                         f"got shape {tuple(out.shape)} for {rows} inputs")
    return out.reshape(rows).detach().double()


class _Evaluator:
    """Model calls in chunks, timed and counted."""

    def __init__(self, model: Callable, x: Tensor, mask: Tensor, base: Union[Tensor, float], target: Optional[int], chunk: int):
        self.model, self.x, self.mask, self.base, self.target, self.chunk = model, x, mask, base, target, chunk
        self.calls = self.inputs = 0
        self.seconds = 0.0

    def run(self, batch: Tensor) -> Tensor:
        start = time.perf_counter()
        with phase("model"), torch.no_grad():
            out = self.model(batch)
        if batch.device.type == "cuda":
            torch.cuda.synchronize(batch.device)
        self.seconds += time.perf_counter() - start
        self.calls += 1
        self.inputs += batch.shape[0]
        return _scalar_outputs(out, self.target, batch.shape[0])

    def coalitions(self, keep: Tensor) -> Tensor:
        values = []
        for start in range(0, keep.shape[0], self.chunk):
            with phase("perturb"):
                batch = perturb(self.x, self.mask, keep[start:start + self.chunk], self.base, validate_ids=False)
            values.append(self.run(batch))
        return torch.cat(values) if values else torch.empty(0, dtype=torch.float64)


def _checkpoint_key(seed, n_permutations, num_features, rank, world_size, block, target, extra) -> str:
    text = f"{seed}|{n_permutations}|{num_features}|{rank}|{world_size}|{block}|{target}|{extra}"
    return hashlib.sha256(text.encode()).hexdigest()


def _load_checkpoint(path: Optional[Path], key: str, num_features: int):
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(io.BytesIO(path.read_bytes()), weights_only=True)
        if state.get("key") != key or tuple(state["sums"].shape) != (num_features,):
            return None
        return state
    except Exception:  # unreadable checkpoint: start the case over (it is only a cache)
        return None


def _save_checkpoint(path: Path, key: str, done: int, sums: Tensor, sumsq: Tensor) -> None:
    buffer = io.BytesIO()
    torch.save({"key": key, "done": done, "sums": sums.cpu(), "sumsq": sumsq.cpu()}, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def _check_arguments(inputs, feature_mask, rank, world_size, n_permutations, chunk, checkpoint_every):
    """``(x, mask)``: the input without its batch dim and the mask on its device; raises on bad arguments."""
    check_rank(rank, world_size)
    int_at_least(n_permutations, "n_permutations", 2)
    for name, value in (("chunk", chunk), ("checkpoint_every", checkpoint_every)):
        int_at_least(value, name, 1)
    if not isinstance(inputs, Tensor) or inputs.dim() < 2 or inputs.shape[0] != 1:
        raise ValueError(f"inputs must be a [1, *S] tensor, got {getattr(inputs, 'shape', type(inputs).__name__)}")
    x = inputs[0]
    mask = feature_mask[0] if feature_mask.dim() == inputs.dim() else feature_mask
    if tuple(mask.shape) != tuple(x.shape) or mask.dtype.is_floating_point:
        raise ValueError(f"feature_mask must be integer of shape {tuple(inputs.shape)} or {tuple(x.shape)}, "
                         f"got {feature_mask.dtype} {tuple(feature_mask.shape)}")
    if int(mask.min()) < 0:
        raise ValueError(f"feature_mask ids must be >= 0, got min {int(mask.min())}")
    mask = mask.to(x.device)
    return x, mask


def sharded_shapley_sampling(model: Callable, inputs: Tensor, feature_mask: Tensor, baseline: Union[Tensor, float],
                             target: Optional[int], n_permutations: int, seed: int, *, rank: int = 0,
                             world_size: int = 1, dist: Optional[Dist] = None, chunk: int = 32,
                             checkpoint: Union[None, str, os.PathLike] = None, checkpoint_every: int = 8,
                             checkpoint_key: str = "", show_progress: bool = False,
                             desc: str = "Shapley") -> ShapleyResult:
    """Shapley value sampling over ``n_permutations`` permutations, this rank's share of them.

    Args:
        model: callable on ``[N, *S]`` batches (``inputs`` without its batch dim, stacked).
        inputs: ``[1, *S]`` floating input.
        feature_mask: integer ids ``0 .. F - 1``, shape ``inputs.shape`` or ``inputs.shape[1:]``.
        baseline: value of removed features: a number or a tensor broadcastable to ``[*S]``.
        target: output column for ``[N, classes]`` outputs; None for one output per input.
        n_permutations: permutations in all, ``>= 2`` (standard errors need two).
        seed: the attribution's seed; permutation ``p`` uses ``permutation_seed(seed, p)``.
        rank, world_size: this process's share (ignored when ``dist`` is given: its rank and size).
        dist: :class:`~mmxai_fast.cohort.distributed.Dist` to all_reduce the sums over; None:
            no reduction (a single process, or a caller that reduces itself).
        chunk: inputs per model call.
        checkpoint: file for this rank's partial sums (hidden, atomic); None: no checkpoints.
        checkpoint_every: save after at least this many new permutations (so a restart loses at
            most that many).
        checkpoint_key: text binding the checkpoint to the model and settings (a checkpoint with
            another key is ignored).
        show_progress: tqdm bar of this rank's evaluations (ETA from the measured throughput).

    Returns:
        :class:`ShapleyResult` (the same on every rank when ``dist`` reduces).

    Raises:
        ValueError: bad shapes, counts or ids, before any model call.
    """
    start = time.perf_counter()
    if dist is not None:
        rank, world_size = dist.rank, dist.world_size
    x, mask = _check_arguments(inputs, feature_mask, rank, world_size, n_permutations, chunk, checkpoint_every)
    num_features = int(mask.max()) + 1
    base = baseline.to(x.device, x.dtype) if isinstance(baseline, Tensor) else baseline
    evaluator = _Evaluator(model, x, mask, base, target, chunk)

    mine = list(range(rank, n_permutations, world_size))
    block = max(1, min(checkpoint_every, chunk // max(1, num_features - 1)))
    key = _checkpoint_key(seed, n_permutations, num_features, rank, world_size, block, target, checkpoint_key)
    path = None if checkpoint is None else Path(checkpoint)
    state = _load_checkpoint(path, key, num_features)
    sums = torch.zeros(num_features, dtype=torch.float64, device=x.device)
    sumsq = torch.zeros_like(sums)
    done = 0
    if state is not None:
        done = int(state["done"])
        sums.copy_(state["sums"])
        sumsq.copy_(state["sumsq"])
    resumed, saved = done, done
    from tqdm.auto import tqdm

    per_perm = max(0, num_features - 1)
    bar = tqdm(total=len(mine) * per_perm, initial=done * per_perm, desc=desc, unit="eval", position=rank,
               leave=False, disable=not show_progress, dynamic_ncols=True)
    error: Optional[BaseException] = None
    try:
        empty_value = evaluator.run(perturb(x, mask, torch.zeros((1, num_features), dtype=torch.bool,
                                                                 device=x.device), base))
        full_value = evaluator.run(x[None])
        while done < len(mine):
            indices = mine[done:done + block]
            with phase("perturb"):
                perms = draw_permutations(seed, indices, num_features).to(x.device)
                perm_index, prefix = shapley_prefix_rows(len(indices), num_features, include_empty=False,
                                                         include_full=False, device=x.device)
                keep = shapley_coalitions(perms, perm_index, prefix)
            middle = evaluator.coalitions(keep).reshape(len(indices), per_perm)
            with phase("accumulate"):
                outputs = torch.cat([empty_value.expand(len(indices), 1), middle.to(x.device),
                                     full_value.expand(len(indices), 1)], dim=1)
                shapley_accumulate(outputs, perms, sums, sumsq)
            done += len(indices)
            bar.update(len(indices) * per_perm)
            if path is not None and (done - saved >= checkpoint_every or done == len(mine)):
                _save_checkpoint(path, key, done, sums, sumsq)
                saved = done
    except Exception as exc:  # the other ranks must hear of it before they wait in the all_reduce
        if dist is None or not dist.active:
            raise
        error = exc
    finally:
        bar.close()
    comm_before = dist.comm_s if dist is not None else 0.0
    if dist is not None and dist.active:
        dist.agree(error)
        with phase("communication"):
            both = torch.stack([sums, sumsq])
            dist.all_reduce_sum(both)
            sums, sumsq = both[0], both[1]
    mean, stderr = shapley_stats(sums, sumsq, n_permutations)
    return ShapleyResult(attributions=mean.float()[mask][None].reshape(inputs.shape),
                         stderr=stderr.float()[mask][None].reshape(inputs.shape), n_permutations=n_permutations,
                         model_calls=evaluator.calls, model_inputs=evaluator.inputs, model_s=evaluator.seconds,
                         resumed_permutations=resumed,
                         comm_s=(dist.comm_s - comm_before) if dist is not None else 0.0,
                         wall_s=time.perf_counter() - start)
