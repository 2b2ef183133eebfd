"""Regression estimators: Leverage SHAP and regression-adjusted Monte Carlo.

* ``leverage`` (Musco & Witter, "Provably accurate Shapley value estimation via leverage score
  sampling", ICLR 2025): Kernel SHAP's constrained weighted least squares, but the coalitions are
  drawn by the *leverage scores* of its design, which are equal for every coalition size: each
  size ``1 .. F-1`` gets the same share of the budget, coalitions are drawn in complementary
  pairs and without replacement (a size whose subsets the budget covers is enumerated; the
  others are drawn uniformly and deduplicated), and every row of size ``s`` is weighted by
  ``(F - 1) / (s (F - s) n_s)`` (its Shapley-kernel weight over its sampling probability,
  ``n_s`` = rows of that size). With every size enumerated this is the exact Shapley value.
  The solve (:func:`mmxai_fast.attr.kernel_shap.constrained_shapley_solve`) imposes
  ``phi_0 = v(0)`` and ``sum phi = v(1) - v(0)`` exactly, on the device. Standard errors: a
  Poisson bootstrap over the sampled pairs (32 reweighted solves, batched).
* ``regression_adjusted`` (Witter, Liu & Musco, "Regression-adjusted Monte Carlo estimators for
  Shapley values and probabilistic values", arXiv 2506.11849, 2025): fit a surrogate ``g`` whose
  Shapley values are known in closed form, then estimate the Shapley values of the residual
  ``v - g`` by unbiased Monte Carlo, ``phi = phi(g) + MC(v - g)``. Here ``g`` is a second-order
  polynomial (all linear terms plus the pairwise interactions of the ``K`` largest linear
  terms; ``phi_i(z_i z_j) = 1/2``), fitted by ridge-regularised weighted least squares; the
  Monte Carlo uses the importance-sampled form ``phi_i = sum_S v(S) c_i(S)`` with sizes drawn
  uniformly and pairs of complements. Two-fold cross-fitting (``g`` fitted on one half, the
  residuals averaged on the other, and back) keeps the estimate unbiased; with a linear ``g``
  on the same samples the correction would vanish and the estimate equal Kernel SHAP.
"""
from __future__ import annotations

import math
from typing import Optional, Union, cast

import torch
from torch import Tensor

from ..attr.kernel_shap import constrained_shapley_solve

__all__ = ["LeverageState", "RegressionAdjustedState", "BOOTSTRAP_REPLICATES", "leverage_rows", "leverage_weights",
           "draw_leverage_pairs"]

BOOTSTRAP_REPLICATES = 32
#: Paired sampling again from this many pairs per unknown (see :func:`paired_sampling`).
PAIRED_FROM = 1.5
#: Coalition sizes whose subsets number at most this many may be enumerated.
_MAX_ENUMERATED = 2 ** 16


def constrained_solve(rows: Tensor, outputs: Tensor, weights: Tensor) -> Tensor:
    """:func:`~mmxai_fast.attr.kernel_shap.constrained_shapley_solve` by the normal equations
    (``[G, F, F]`` Cholesky instead of a pseudo-inverse of ``[G, R, F]``; the same minimum-norm
    answer): the centred design has the null vector ``1``, so ``C^T W C + 1 1^T`` is invertible
    and its solution has ``sum u = 0``. Falls back to the pseudo-inverse when a gram is singular."""
    num = rows.shape[-1]
    values = outputs.to(device=rows.device, dtype=torch.float64)
    full, empty = values[:, 0], values[:, 1]
    delta = (full - empty).unsqueeze(-1)
    if rows.shape[1] <= 2:
        return delta.expand(-1, num) / num
    z = rows[:, 2:].to(torch.float64)
    target = values[:, 2:] - empty.unsqueeze(-1) - z.sum(-1) * delta / num
    centred = z - z.mean(-1, keepdim=True)
    weighted = centred * weights[:, 2:].unsqueeze(-1)
    gram = weighted.transpose(1, 2) @ centred
    scale = gram.diagonal(dim1=1, dim2=2).mean(-1).clamp(min=1e-300).view(-1, 1, 1)
    factor, info = torch.linalg.cholesky_ex(gram + scale / num)
    if bool((info != 0).any()):
        return constrained_shapley_solve(rows, outputs, weights)
    u = torch.cholesky_solve((weighted.transpose(1, 2) @ target.unsqueeze(-1)), factor).squeeze(-1)
    return delta / num + u


def _ends(num: int, device) -> Tensor:
    return torch.stack((torch.ones(num, dtype=torch.bool, device=device), torch.zeros(num, dtype=torch.bool, device=device)))


def _uniform_subsets(sizes: Tensor, num: int, generator, device) -> Tensor:
    """``[n, F]`` uniformly random subsets with the given sizes (one vectorised draw)."""
    ranks = torch.rand((sizes.numel(), num), generator=generator, device=device).argsort(-1).argsort(-1)
    return ranks < sizes.view(-1, 1)


def _pair_capacity(num: int, s: int) -> float:
    """Distinct complementary pairs with smaller side of size ``s``."""
    count = math.comb(num, s)
    return count / 2 if 2 * s == num else count


def _enumerate_pairs(num: int, s: int, device) -> Tensor:
    """All pairs of size ``s`` (each subset, then its complement) as ``[2 C, F]`` rows (for
    ``2 s = F``: every subset of size ``s`` once)."""
    idx = torch.combinations(torch.arange(num, device=device), r=s)
    if 2 * s == num:
        rows = torch.zeros((idx.shape[0], num), dtype=torch.bool, device=device)
        return rows.scatter_(1, idx, True)
    rows = torch.zeros((idx.shape[0], num), dtype=torch.bool, device=device).scatter_(1, idx, True)
    return torch.stack((rows, ~rows), 1).reshape(-1, num)


def _allocate(num: int, pairs: int, enumerated=(), sampled=()):
    """Water-filling of ``pairs`` over the half sizes ``1 .. F/2`` (share 1, 1/2 for ``F/2``):
    sizes whose pairs fit in their share are enumerated. Returns (enumerate, sample, pairs left)."""
    open_sizes = [s for s in range(1, num // 2 + 1) if s not in enumerated]
    enumerate_now = []
    while open_sizes:
        share = {s: (0.5 if 2 * s == num else 1.0) for s in open_sizes}
        unit = pairs / sum(share.values())
        fits = [s for s in open_sizes if s not in sampled and _pair_capacity(num, s) <= _MAX_ENUMERATED
                and _pair_capacity(num, s) <= unit * share[s]]
        if not fits:
            break
        for s in fits:
            pairs -= int(_pair_capacity(num, s))
            open_sizes.remove(s)
            enumerate_now.append(s)
    return enumerate_now, open_sizes, max(pairs, 0)


def _draw_open(num: int, count: int, open_sizes, generator, device, paired: bool) -> Tensor:
    """``count`` distinct first sides (paired) or rows (unpaired) on the sampled sizes: sizes by
    their leverage share, members uniform; repeats are drawn again (a few rounds), so the budget
    is spent on distinct coalitions as long as the sizes have room."""
    probs = torch.tensor([0.5 if 2 * s == num else 1.0 for s in open_sizes], device=device)
    sizes_t = torch.tensor(open_sizes, device=device)
    first = torch.zeros((0, num), dtype=torch.bool, device=device)
    for _ in range(8):
        missing = count - first.shape[0]
        if missing <= 0:
            break
        choice = torch.multinomial(probs, missing, replacement=True, generator=generator)
        drawn = _uniform_subsets(sizes_t[choice], num, generator, device)
        if not paired:  # either side of the pair, with probability 1/2 each
            flip = torch.rand(missing, generator=generator, device=device) < 0.5
            drawn = torch.where(flip.unsqueeze(1), ~drawn, drawn)
        # without repeats (a pair is known by its first side, which has the smaller size)
        first = torch.unique(torch.cat((first, drawn)), dim=0)
    first = first[torch.randperm(first.shape[0], generator=generator, device=device)][:count]
    return first


def draw_leverage_pairs(num: int, pairs: int, generator, device, enumerated=(), sampled=(), first_id: int = 0,
                        paired: bool = True):
    """Leverage SHAP coalitions for ``pairs`` complementary pairs: ``(rows [R, F], pair id per row
    [R] (-1 for enumerated sizes), sizes enumerated, sizes sampled)``. ``paired=False`` spends the
    same budget on ``2 pairs`` distinct coalitions, each the first or the second side of a pair
    (the Shapley kernel is symmetric, so the sizes' shares are unchanged)."""
    enumerate_now, open_sizes, pairs = _allocate(num, pairs, enumerated, sampled)
    rows, ids = [], []
    for s in enumerate_now:
        rows.append(_enumerate_pairs(num, s, device))
        ids.append(torch.full((rows[-1].shape[0],), -1, dtype=torch.int64, device=device))
    if open_sizes and pairs > 0:
        first = _draw_open(num, pairs if paired else 2 * pairs, open_sizes, generator, device, paired)
        if paired:
            rows.append(torch.stack((first, ~first), 1).reshape(-1, num))
            ids.append((first_id + torch.arange(first.shape[0], device=device)).repeat_interleave(2))
        else:
            rows.append(first)
            ids.append(first_id + torch.arange(first.shape[0], device=device))
    else:
        open_sizes = []
    empty = torch.zeros((0, num), dtype=torch.bool, device=device)
    return (torch.cat(rows) if rows else empty, torch.cat(ids) if ids else empty.new_zeros(0, dtype=torch.int64),
            enumerate_now, open_sizes)


def paired_sampling(num: int, evaluations: int) -> bool:
    """Pairs of complements, or single coalitions? A pair's two centred rows are opposite, so ``P``
    pairs give the regression only ``P`` directions for its ``F - 1`` unknowns: with ``P`` just
    above ``F - 1`` the solve is nearly singular (the error of an ``n``-row regression with ``p``
    unknowns grows like ``p / (n - p)``), and the ``2 P`` single coalitions of the same budget are
    better conditioned. Below ``F - 1`` pairs the minimum-norm solution shrinks well and pairs win
    again; from :data:`PAIRED_FROM` ``(F - 1)`` pairs on their antithetic correlation wins
    (thresholds measured on the benchmark's games, ``benchmarks/bench_estimators.py``)."""
    pairs, unknowns = (evaluations - 2) // 2, num - 1
    return not unknowns <= pairs < PAIRED_FROM * unknowns


def leverage_rows(groups: int, n_samples: int, num_features: int, device) -> Tensor:
    """``[G, R]`` rows for :class:`~mmxai_fast.attr.KernelShap` ``sampler="leverage"``: the full and
    the empty coalition, then Leverage SHAP pairs for ``n_samples - 2`` evaluations (torch's
    global RNG; the same coalitions for every group; ``R <= n_samples`` after deduplication)."""
    if num_features < 2:
        raise ValueError(f"leverage sampling needs at least 2 features, got {num_features}")
    rows = draw_leverage_pairs(num_features, max(n_samples - 2, 0) // 2, None, device,
                               paired=paired_sampling(num_features, n_samples))[0]
    return torch.cat((_ends(num_features, device), rows)).expand(groups, -1, -1)


def leverage_weights(rows: Tensor) -> Tensor:
    """Weights ``[..., R]`` float64 of Leverage SHAP rows: ``(F - 1) / (s (F - s) n_s)`` with ``n_s``
    the rows of size ``s`` (the two ends, solved as constraints, get 1)."""
    num = rows.shape[-1]
    sizes = rows.sum(-1)
    counts = torch.nn.functional.one_hot(sizes, num + 1).sum(-2, keepdim=True).to(torch.float64)
    n_s = counts.expand(*sizes.shape, -1).gather(-1, sizes.unsqueeze(-1)).squeeze(-1)
    s = sizes.to(torch.float64).clamp(1, num - 1)
    weights = (num - 1) / (s * (num - s) * n_s)
    return torch.where((sizes == 0) | (sizes == num), 1.0, weights)


class LeverageState:
    """Running Leverage SHAP estimate on a game (see the module docstring)."""

    def __init__(self, game, num_features: int, generator, device, paired: Optional[bool] = None):
        if num_features < 2:
            raise ValueError(f"leverage sampling needs at least 2 features, got {num_features}")
        self.game, self.num, self.gen, self.device = game, num_features, generator, device
        self.paired = paired
        self.rows = [_ends(num_features, device)]
        self.values = [game(self.rows[0])]
        self.pair_ids = [torch.full((2,), -1, dtype=torch.int64, device=device)]  # -1: not resampled
        self.n_pairs = 0
        self.n_evaluations = 2
        self.enumerated: set = set()
        self.sampled: set = set()

    def step(self, budget: int) -> None:
        if self.paired is None:
            self.paired = paired_sampling(self.num, self.n_evaluations + budget)
        rows, ids, enumerated, sampled = draw_leverage_pairs(self.num, max(1, budget // 2), self.gen, self.device,
                                                             self.enumerated, self.sampled, self.n_pairs,
                                                             self.paired)
        self.enumerated.update(enumerated)
        self.sampled.update(sampled)
        self.n_pairs = max(self.n_pairs, int(ids.max()) + 1 if ids.numel() else 0)
        if rows.shape[0]:
            self.rows.append(rows)
            self.values.append(self.game(rows))
            self.pair_ids.append(ids)
            self.n_evaluations += rows.shape[0]

    def _solve(self, multipliers: Tensor) -> Tensor:
        """``[G, F]`` solves with per-row multipliers ``[G, R]`` (1 everywhere: the estimate)."""
        rows, values = torch.cat(self.rows), torch.cat(self.values)
        sizes = rows.sum(-1)
        counts = torch.zeros((multipliers.shape[0], self.num + 1), dtype=torch.float64, device=self.device)
        counts.scatter_add_(1, sizes.expand_as(multipliers), multipliers)
        s = sizes.to(torch.float64).clamp(1, self.num - 1)
        kernel = (self.num - 1) / (s * (self.num - s))
        weights = kernel * multipliers / counts.gather(1, sizes.expand_as(multipliers)).clamp(min=1e-300)
        groups = multipliers.shape[0]
        return constrained_solve(rows.expand(groups, -1, -1), values.expand(groups, -1), weights)

    def estimate(self):
        ids = torch.cat(self.pair_ids)
        ones = torch.ones((1, ids.numel()), dtype=torch.float64, device=self.device)
        phi = self._solve(ones)[0]
        if self.n_pairs < 2:
            return phi, torch.full_like(phi, float("inf") if self.sampled else 0.0)
        draws = torch.poisson(torch.ones((BOOTSTRAP_REPLICATES, self.n_pairs), dtype=torch.float64,
                                         device=self.device), generator=self.gen)
        multipliers = torch.where(ids >= 0, draws[:, ids.clamp(min=0)], 1.0)
        return phi, self._solve(multipliers).std(0)


def _design(rows: Tensor, pairs: Tensor) -> Tensor:
    z = rows.to(torch.float64)
    if pairs.numel() == 0:
        return z
    return torch.cat((z, z[:, pairs[:, 0]] * z[:, pairs[:, 1]]), 1)


class RegressionAdjustedState:
    """Running regression-adjusted Monte Carlo estimate on a game (see the module docstring)."""

    def __init__(self, game, num_features: int, generator, device, interactions: int = 16, ridge: float = 1e-6):
        if num_features < 2:
            raise ValueError(f"regression_adjusted needs at least 2 features, got {num_features}")
        self.game, self.num, self.gen, self.device = game, num_features, generator, device
        self.interactions, self.ridge = interactions, ridge
        full, empty = game(_ends(num_features, device)).tolist()
        self.full, self.empty = full, empty
        self.n_evaluations = 2
        self.first = torch.zeros((0, num_features), dtype=torch.bool, device=device)
        self.values = torch.zeros((0, 2), dtype=torch.float64, device=device)

    def step(self, budget: int) -> None:
        pairs = max(1, budget // 2)
        sizes = torch.randint(1, self.num, (pairs,), generator=self.gen, device=self.device)
        first = _uniform_subsets(sizes, self.num, self.gen, self.device)
        values = self.game(torch.stack((first, ~first), 1).reshape(-1, self.num)).view(-1, 2)
        self.first, self.values = torch.cat((self.first, first)), torch.cat((self.values, values))
        self.n_evaluations += 2 * pairs

    def _fit(self, rows: Tensor, values: Tensor):
        """Surrogate ``g(z) = b + w.z + sum_k u_k z_i z_j``: returns (predict, Shapley values of g)."""
        num = self.num
        s = rows.sum(-1).to(torch.float64)
        weights = 1.0 / (s * (num - s)).clamp(min=1)
        ends = _ends(num, self.device)
        end_w = torch.full((2,), float(weights.sum()) * 10 + 1.0, dtype=torch.float64, device=self.device)
        all_rows = torch.cat((ends, rows))
        y = torch.cat((torch.tensor([self.full, self.empty], dtype=torch.float64, device=self.device), values))
        w = torch.cat((end_w, weights)).sqrt()
        pairs = torch.zeros((0, 2), dtype=torch.int64, device=self.device)
        for _ in range(2):  # linear fit, then add the interactions of the largest linear terms
            x = torch.cat((torch.ones((all_rows.shape[0], 1), dtype=torch.float64, device=self.device),
                           _design(all_rows, pairs)), 1)
            gram = (x * w.square().unsqueeze(1)).T @ x
            gram += self.ridge * float(gram.diagonal().mean()) * torch.eye(x.shape[1], dtype=torch.float64,
                                                                            device=self.device)
            coef = torch.linalg.solve(gram, (x * w.square().unsqueeze(1)).T @ y)
            k = min(num, self.interactions, int(math.sqrt(max(rows.shape[0], 1))))
            if pairs.numel() or k < 2:
                break
            top = coef[1:num + 1].abs().topk(k).indices
            pairs = torch.combinations(top, r=2)
        linear, inter = coef[1:num + 1], coef[num + 1:]
        phi_g = linear.clone()
        if pairs.numel():
            phi_g.index_add_(0, pairs[:, 0], inter / 2)
            phi_g.index_add_(0, pairs[:, 1], inter / 2)

        def predict(r: Tensor) -> Tensor:
            return coef[0] + _design(r, pairs) @ coef[1:]
        return predict, phi_g

    def _residual_terms(self, predict, rows: Tensor, values: Tensor) -> Tensor:
        """Per pair ``[P, F]`` unbiased Monte Carlo terms of the residual's Shapley values (sizes
        uniform on ``1 .. F-1``: ``phi_i = E[(F - 1) r(S) (1[i in S] / s - 1[i not in S] / (F - s))]``)."""
        num = self.num
        terms: Union[Tensor, float] = 0.0
        for side, r in ((0, rows), (1, ~rows)):
            z = r.to(torch.float64)
            s = z.sum(-1, keepdim=True)
            resid = (values[:, side] - predict(r)).unsqueeze(1)
            terms = terms + 0.5 * (num - 1) * resid * (z / s - (1 - z) / (num - s))
        return cast(Tensor, terms)  # a Tensor after the first side

    def estimate(self):
        count = self.first.shape[0]
        halves = [torch.arange(count, device=self.device) % 2 == h for h in (0, 1)]
        if count < 4:
            _, phi_g = self._fit(self.first, self.values[:, 0])
            return phi_g, torch.full_like(phi_g, float("inf"))
        estimates, variances = [], []
        ends_rows = _ends(self.num, self.device)
        for fit_half, mc_half in ((halves[0], halves[1]), (halves[1], halves[0])):
            rows = torch.cat((self.first[fit_half], ~self.first[fit_half]))
            values = torch.cat((self.values[fit_half, 0], self.values[fit_half, 1]))
            predict, phi_g = self._fit(rows, values)
            r_full, r_empty = (torch.tensor([self.full, self.empty], dtype=torch.float64, device=self.device)
                               - predict(ends_rows)).tolist()
            terms = self._residual_terms(predict, self.first[mc_half], self.values[mc_half])
            estimates.append(phi_g + (r_full - r_empty) / self.num + terms.mean(0))
            variances.append(terms.var(0) / terms.shape[0])
        return 0.5 * (estimates[0] + estimates[1]), 0.5 * (variances[0] + variances[1]).sqrt()
