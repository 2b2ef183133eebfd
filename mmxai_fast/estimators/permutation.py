"""Permutation estimators: Captum's Shapley value sampling, antithetic pairs, and Owen values.

* ``permutation`` (Castro et al. 2009; Captum's ``ShapleyValueSampling``): the marginal
  contribution of each feature along uniformly random orders, averaged.
* ``antithetic`` (Mitchell et al., JMLR 2022): every order is followed by its reverse; the two
  marginals of a feature are averaged before the variance is taken (negatively correlated).
* ``owen`` (Owen 1977; SHAP's PartitionExplainer, López & Saboya 2009 for the sampling form): the
  orders are drawn *within a hierarchy*: first an order of the coarse groups, then an order of the
  members inside every group (recursively for deeper trees). Averaged marginals are unbiased for
  the Owen values, which respect the hierarchy (a group's members share the group's value and
  the Owen value equals the Shapley value when the hierarchy is flat).

One order costs ``F - 1`` model evaluations (the empty and the full coalition are evaluated once
for all orders). Every state keeps the sums of the per-order marginals and of their squares, so
its standard errors are ``std / sqrt(orders)``.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Union

import torch
from torch import Tensor

__all__ = ["PermutationState", "hierarchy_paths", "hierarchy_from_masks"]

#: Coalition rows (orders x positions x features) built per batch of orders.
_ROW_ELEMENTS = 2 ** 24


def _flatten_tree(tree, num_nodes: List[int], depth: int, path: List[int], out: dict) -> None:
    node = num_nodes[depth]
    num_nodes[depth] += 1
    for child in tree:
        if isinstance(child, (list, tuple)):
            if len(num_nodes) <= depth + 1:
                num_nodes.append(0)
            _flatten_tree(child, num_nodes, depth + 1, path + [node], out)
        elif isinstance(child, int) and not isinstance(child, bool):
            if child in out:
                raise ValueError(f"hierarchy: feature {child} appears twice")
            out[child] = path + [node]
        else:
            raise ValueError(f"hierarchy: leaves must be int feature ids, got {child!r}")


def hierarchy_paths(hierarchy: Union[Tensor, Sequence], num_features: int) -> Tensor:
    """Node ids along each feature's path from the root: int64 ``[L, F]`` (level 0 coarsest).

    Args:
        hierarchy: a parent array (``[F]`` ints: the coarse group of every feature; two levels)
            or nested lists whose leaves are the feature ids ``0 .. F-1`` (any depth, e.g.
            ``[[0, 1], [2, [3, 4]]]``). Shorter paths are padded with singleton nodes.

    Raises:
        ValueError: a feature missing or repeated, a negative group id, a wrong length.
    """
    if isinstance(hierarchy, Tensor) or (isinstance(hierarchy, (list, tuple)) and hierarchy
                                         and all(isinstance(h, int) and not isinstance(h, bool) for h in hierarchy)):
        parent = torch.as_tensor(hierarchy, dtype=torch.int64).flatten()
        if parent.numel() != num_features:
            raise ValueError(f"hierarchy (parent array) must have F = {num_features} entries, got {parent.numel()}")
        if parent.numel() and int(parent.min()) < 0:
            raise ValueError(f"hierarchy (parent array) ids must be >= 0, got {int(parent.min())}")
        return parent.unsqueeze(0)
    if not isinstance(hierarchy, (list, tuple)):
        raise ValueError(f"hierarchy must be a parent array or nested lists, got {type(hierarchy).__name__}")
    paths: dict = {}
    num_nodes = [0, 0]
    for group in hierarchy:  # the root is implicit: its children are level 0
        _flatten_tree(group if isinstance(group, (list, tuple)) else [group], num_nodes, 0, [], paths)
    missing = sorted(set(range(num_features)) - set(paths))
    extra = sorted(set(paths) - set(range(num_features)))
    if missing or extra:
        raise ValueError(f"hierarchy leaves must be exactly the features 0..{num_features - 1}, "
                         f"missing {missing[:5]}, unknown {extra[:5]}")
    depth = max(len(p) for p in paths.values())
    base = [num_nodes[0]]
    for d in range(1, depth):
        base.append(num_nodes[d] + num_features)  # padding ids beyond the real nodes of level d
    table = torch.empty((depth, num_features), dtype=torch.int64)
    for f, p in paths.items():
        table[:, f] = torch.tensor(p + [base[d] + f for d in range(len(p), depth)])
    return table


def hierarchy_from_masks(fine_mask: Tensor, coarse_mask: Tensor) -> Tensor:
    """Parent array of a two-level hierarchy from two label maps on the same grid (e.g. SLIC at
    two ``n_segments``): each fine feature joins the coarse region holding most of its voxels.

    Returns:
        int64 ``[F]`` (``F = fine_mask.max() + 1``) of coarse ids renumbered ``0 .. G-1``.
    """
    if fine_mask.shape != coarse_mask.shape:
        raise ValueError(f"coarse_mask must have fine_mask's shape {tuple(fine_mask.shape)}, "
                         f"got {tuple(coarse_mask.shape)}")
    fine, coarse = fine_mask.flatten().long(), coarse_mask.flatten().long()
    num_fine, num_coarse = int(fine.max()) + 1, int(coarse.max()) + 1
    votes = torch.bincount(fine * num_coarse + coarse, minlength=num_fine * num_coarse).view(num_fine, num_coarse)
    parent = votes.argmax(1)
    return torch.unique(parent, return_inverse=True)[1]


def random_ranks(count: int, num_features: int, generator, device, paths: Optional[Tensor] = None) -> Tensor:
    """``[count, F]`` position of every feature in ``count`` random orders (hierarchical when
    ``paths`` from :func:`hierarchy_paths` is given: lexicographic in the random keys of the
    feature's nodes, coarsest level first)."""
    keys = torch.rand((count, num_features), generator=generator, device=device)
    order = keys.argsort(-1)
    if paths is not None:
        paths = paths.to(device)
        for level in range(paths.shape[0] - 1, -1, -1):  # stable sorts, finest level first
            node_keys = torch.rand((count, int(paths[level].max()) + 1), generator=generator, device=device)
            level_keys = node_keys[:, paths[level]].gather(1, order)
            order = order.gather(1, level_keys.argsort(dim=-1, stable=True))
    return order.argsort(-1)


class PermutationState:
    """Running permutation / antithetic / Owen estimate on a game (see the module docstring)."""

    def __init__(self, game, num_features: int, generator, device, antithetic: bool = False,
                 paths: Optional[Tensor] = None):
        if num_features < 1:
            raise ValueError(f"the game needs at least 1 feature, got {num_features}")
        self.game, self.num, self.gen, self.device = game, num_features, generator, device
        self.antithetic, self.paths = antithetic, paths
        ends = torch.stack((torch.zeros(num_features, dtype=torch.bool, device=device),
                            torch.ones(num_features, dtype=torch.bool, device=device)))
        self.empty, self.full = game(ends).tolist()
        self.n_evaluations = 2
        self.units = 0
        self.sum = torch.zeros(num_features, dtype=torch.float64, device=device)
        self.sq = torch.zeros_like(self.sum)

    @property
    def evaluations_per_unit(self) -> int:
        return max(1, self.num - 1) * (2 if self.antithetic else 1)

    def step(self, budget: int) -> None:
        """Add as many orders (antithetic pairs) as ``budget`` evaluations pay for (at least one)."""
        units = max(1, budget // self.evaluations_per_unit)
        per_batch = max(1, _ROW_ELEMENTS // max(1, self.num * self.num))
        for start in range(0, units, per_batch):
            self._add(min(per_batch, units - start))

    def _marginals(self, ranks: Tensor) -> Tensor:
        """``[n, F]`` marginal contribution of each feature along the orders given by ``ranks``."""
        n, num = ranks.shape
        positions = torch.arange(1, num, device=self.device)
        rows = ranks.unsqueeze(1) < positions.view(1, -1, 1)  # [n, F-1, F] prefixes of size 1..F-1
        inner = self.game(rows.reshape(-1, num)).view(n, num - 1) if num > 1 else ranks.new_zeros((n, 0)).double()
        self.n_evaluations += n * (num - 1)
        values = torch.cat((torch.full((n, 1), self.empty, dtype=torch.float64, device=self.device), inner,
                            torch.full((n, 1), self.full, dtype=torch.float64, device=self.device)), dim=1)
        return (values[:, 1:] - values[:, :-1]).gather(1, ranks)  # feature f entered at position ranks[f]

    def _add(self, units: int) -> None:
        ranks = random_ranks(units, self.num, self.gen, self.device, self.paths)
        marginal = self._marginals(ranks)
        if self.antithetic:
            marginal = 0.5 * (marginal + self._marginals(self.num - 1 - ranks))
        self.units += units
        self.sum += marginal.sum(0)
        self.sq += marginal.square().sum(0)

    def estimate(self):
        """``(phi [F], stderr [F])`` float64; stderr is inf with fewer than 2 orders."""
        mean = self.sum / self.units
        if self.units < 2:
            return mean, torch.full_like(mean, float("inf"))
        var = (self.sq - self.units * mean.square()).clamp(min=0) / (self.units - 1)
        return mean, (var / self.units).sqrt()
