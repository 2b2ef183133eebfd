"""Who does what: cases and permutations split across ranks, and seeds that depend only on the
case and the permutation index, never on the rank or the world size (so a run on 1, 2 or 64
processes draws the same permutations)."""
from __future__ import annotations

import hashlib
from typing import List, Sequence, TypeVar
from .._validation import int_at_least, int_in_range

__all__ = ["shard", "case_seed", "permutation_seed", "check_rank"]

T = TypeVar("T")
_SEED_BITS = 63


def check_rank(rank: int, world_size: int) -> None:
    int_at_least(world_size, "world_size", 1)
    int_in_range(rank, "rank", 0, world_size)


def shard(items: Sequence[T], rank: int, world_size: int) -> List[T]:
    """Round-robin share of ``items`` for ``rank``: ``items[rank::world_size]``."""
    check_rank(rank, world_size)
    return list(items[rank::world_size])


def _hash_seed(*parts) -> int:
    text = "\x1f".join(str(p) for p in parts).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little") & ((1 << _SEED_BITS) - 1)


def case_seed(base_seed: int, case_id: str) -> int:
    """Seed of one case: a hash of the run's seed and the case id (independent of case order)."""
    return _hash_seed("case", base_seed, case_id)


def permutation_seed(seed: int, index: int) -> int:
    """Seed of permutation ``index`` of an attribution seeded with ``seed``."""
    return _hash_seed("permutation", seed, index)
