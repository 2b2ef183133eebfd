"""Permutations and walk rows of Shapley value sampling: ``random_permutations`` and
``shapley_prefix_rows`` (plain PyTorch; the kernels that consume them are in ``ops/shapley.py``)."""
from __future__ import annotations

from typing import Optional, Tuple, Union

import torch


def _non_negative_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} must be a non-negative int, got {value!r}")
    return value


def random_permutations(num_permutations: int, num_features: int, *,
                        generator: Optional[torch.Generator] = None,
                        device: Union[str, torch.device, None] = None,
                        antithetic: bool = False) -> torch.Tensor:
    """Uniformly random permutations of ``0 .. num_features - 1``, drawn on the device.

    Each row is the argsort of float64 uniform noise (ties, which would bias the draw, have
    probability about ``F**2 / 2**54``).

    Args:
        num_permutations: ``P >= 0``, the number of rows.
        num_features: ``F >= 1``.
        generator: optional ``torch.Generator``; it must live on ``device``.
        device: where to draw; default the generator's device, else CPU.
        antithetic: if True, rows ``2k + 1`` are rows ``2k`` reversed (``P`` must be even).

    Returns:
        ``[P, F]`` int64 tensor, each row a permutation.

    Raises:
        ValueError: negative ``P``, ``F < 1``, odd ``P`` with ``antithetic``, or a generator on
            another device.
    """
    _non_negative_int(num_permutations, "num_permutations")
    _non_negative_int(num_features, "num_features")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    if antithetic and num_permutations % 2:
        raise ValueError(f"num_permutations must be even with antithetic=True, got {num_permutations}")
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    device = torch.device(device)
    if generator is not None and generator.device.type != device.type:
        raise ValueError(f"generator is on {generator.device}, but device is {device}")
    draws = num_permutations // 2 if antithetic else num_permutations
    noise = torch.rand((draws, num_features), generator=generator, device=device, dtype=torch.float64)
    perms = noise.argsort(dim=1)
    if antithetic:
        perms = torch.stack((perms, perms.flip(1)), dim=1).reshape(num_permutations, num_features)
    return perms


def shapley_prefix_rows(num_permutations: int, num_features: int, include_empty: bool = False,
                        include_full: bool = True, *,
                        device: Union[str, torch.device, None] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """The ``(perm_index, prefix_size)`` rows of a permutation walk, in Captum's order.

    Captum evaluates the baseline (prefix 0) once, then for every permutation the prefixes
    ``1 .. F``: rows are permutation-major, prefix size ascending. Prefix 0 (all features
    removed) and prefix ``F`` (none removed) are the same coalition for every permutation; leave
    them out (``include_empty=False``, ``include_full=False``) to evaluate them once yourself.

    Args:
        num_permutations: ``P >= 0``.
        num_features: ``F >= 1``.
        include_empty: include prefix size 0 for each permutation.
        include_full: include prefix size ``F`` for each permutation.
        device: device of the returned tensors (default CPU).

    Returns:
        ``(perm_index, prefix_size)``, two int64 tensors of length
        ``R = P * (F - 1 + include_empty + include_full)``.

    Raises:
        ValueError: negative ``P`` or ``F < 1``.
    """
    _non_negative_int(num_permutations, "num_permutations")
    _non_negative_int(num_features, "num_features")
    if num_features < 1:
        raise ValueError(f"num_features must be >= 1, got {num_features}")
    first = 0 if include_empty else 1
    last = num_features if include_full else num_features - 1
    sizes = torch.arange(first, last + 1, dtype=torch.int64, device=device)
    perm_index = torch.arange(num_permutations, dtype=torch.int64, device=device).repeat_interleave(sizes.numel())
    return perm_index, sizes.repeat(num_permutations)
