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
  Shapley values and probabilistic values", arXiv 2506.11849, 2025): fit a surrogate ``f`` whose
  Shapley values are known in closed form and estimate only the residual's,
  ``phi = phi(f) + estimate(v - f)``, with the same samples. Here ``f = g + l``: ``g`` a sum of
  pair and triple products of the most important features (:class:`RegressionAdjustedState`) and
  ``l`` the Leverage SHAP solve of ``v - g``; the paper's Monte Carlo (MSR) term of the residual
  ``v - g - l`` vanishes on these rows (the weighted normal equations of ``l``), so the estimate
  is ``phi(g) + phi_lev(v - g)``. A linear ``g`` changes nothing, nor does a pairwise one with
  paired rows (paired Leverage SHAP is exact on pairwise games); ``g`` is kept only when a
  two-fold held-out check shows it pays, else this is Leverage SHAP. (The paper's best surrogate,
  a tree ensemble with Tree SHAP values, is not implemented.)
"""
from __future__ import annotations

import math
from typing import Optional, Union

import torch
from torch import Tensor

from ..attr.kernel_shap import constrained_shapley_solve

__all__ = ["LeverageState", "RegressionAdjustedState", "BOOTSTRAP_REPLICATES", "leverage_rows", "leverage_weights",
           "draw_leverage_pairs"]

BOOTSTRAP_REPLICATES = 32
#: Paired sampling again from this many pairs per unknown (see :func:`paired_sampling`).
PAIRED_FROM = 1.5
#: Leverage SHAP with sampled sizes: ridge ``LEVERAGE_RIDGE (F - 1) / rows`` (relative to the gram's
#: mean diagonal) on the centred solve, a shrinkage towards the equal split ``(v(1) - v(0)) / F``
#: that fades as rows are added; it tames the nearly determined solves of budgets close to
#: ``F - 1`` rows (measured on the benchmark's game: -7% RMSE at 24 evaluations for F = 12, no
#: change from 100 on; 0.1 and more cost accuracy on the tests' game).
LEVERAGE_RIDGE = 0.03
#: Regression-adjusted: interaction terms at most this share of the rows beyond the linear terms.
INTERACTION_SHARE = 0.5
#: Regression-adjusted: ridge on each interaction coefficient, relative to its gram diagonal.
INTERACTION_RIDGE = 0.1
#: Regression-adjusted: the interactions are used only if they cut the held-out error by this share.
INTERACTION_GAIN = 0.5
#: Coalition sizes whose subsets number at most this many may be enumerated.
_MAX_ENUMERATED = 2 ** 16


def constrained_solve(rows: Tensor, outputs: Tensor, weights: Tensor, ridge: float = 0.0) -> Tensor:
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
    eye = torch.eye(num, dtype=torch.float64, device=rows.device)
    factor, info = torch.linalg.cholesky_ex(gram + scale / num + ridge * scale * eye)
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

    def _solve(self, multipliers: Tensor, values: Optional[Tensor] = None) -> Tensor:
        """``[G, F]`` solves with per-row multipliers ``[G, R]`` (1 everywhere: the estimate), of
        the game's values or of other ``values [R]`` on the same rows."""
        rows = torch.cat(self.rows)
        values = torch.cat(self.values) if values is None else values
        sizes = rows.sum(-1)
        counts = torch.zeros((multipliers.shape[0], self.num + 1), dtype=torch.float64, device=self.device)
        counts.scatter_add_(1, sizes.expand_as(multipliers), multipliers)
        s = sizes.to(torch.float64).clamp(1, self.num - 1)
        kernel = (self.num - 1) / (s * (self.num - s))
        weights = kernel * multipliers / counts.gather(1, sizes.expand_as(multipliers)).clamp(min=1e-300)
        groups = multipliers.shape[0]
        ridge = LEVERAGE_RIDGE * (self.num - 1) / max(1, rows.shape[0] - 2) if self.sampled else 0.0
        return constrained_solve(rows.expand(groups, -1, -1), values.expand(groups, -1), weights, ridge)

    def estimate(self):
        return self._estimate(None, 0.0)

    def _estimate(self, values: Optional[Tensor], offset: Union[Tensor, float]):
        """The solve of ``values`` (None: the game's) plus ``offset``, and its bootstrap stderr."""
        ids = torch.cat(self.pair_ids)
        ones = torch.ones((1, ids.numel()), dtype=torch.float64, device=self.device)
        phi = self._solve(ones, values)[0] + offset
        if self.n_pairs < 2:
            return phi, torch.full_like(phi, float("inf") if self.sampled else 0.0)
        draws = torch.poisson(torch.ones((BOOTSTRAP_REPLICATES, self.n_pairs), dtype=torch.float64,
                                         device=self.device), generator=self.gen)
        multipliers = torch.where(ids >= 0, draws[:, ids.clamp(min=0)], 1.0)
        return phi, self._solve(multipliers, values).std(0)


def _products(rows: Tensor, terms: Tensor) -> Tensor:
    """``[R, T]`` float64 products of the features of each term ``[T, k]``."""
    return rows.to(torch.float64)[:, terms].prod(-1)


def interaction_terms(ranking: Tensor, room: float) -> list:
    """Pairs and triples of the ``K`` top-ranked features (``ranking``: indices, most important
    first), ``K`` the largest with ``C(K, 2) + C(K, 3) <= room`` terms: ``[[P, 2], [T, 3]]``."""
    k = 0
    while k < ranking.numel() and math.comb(k + 1, 2) + math.comb(k + 1, 3) <= room:
        k += 1
    top = ranking[:k]
    empty = [torch.zeros((0, order), dtype=torch.int64, device=ranking.device) for order in (2, 3)]
    return [torch.combinations(top, r=order) if k >= order else empty[order - 2] for order in (2, 3)]


def _ridge_fit(x: Tensor, values: Tensor, weights: Tensor, linear: int) -> Tensor:
    """Weighted least squares of ``values`` on ``x`` (ridge on the columns from ``linear`` on)."""
    gram = (x * weights.unsqueeze(1)).T @ x
    ridge = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    ridge[linear:] = INTERACTION_RIDGE * gram.diagonal()[linear:]
    rhs = (x * weights.unsqueeze(1)).T @ values.unsqueeze(1)
    return torch.linalg.lstsq(gram + torch.diag(ridge), rhs).solution[:, 0]


def _terms_pay(x: Tensor, values: Tensor, weights: Tensor, linear: int) -> bool:
    """Two-fold check (rows 2, 3 | 4, 5 | ... alternate, so a complementary pair stays in one fold;
    the two ends are always fitted): do the interaction columns cut the held-out weighted squared
    error of the linear fit by at least :data:`INTERACTION_GAIN`?"""
    fold = (torch.arange(x.shape[0], device=x.device) // 2) % 2
    fold[:2] = -1
    errors = torch.zeros(2, dtype=torch.float64, device=x.device)
    for held in (0, 1):
        fit, out = fold != held, fold == held
        for model, columns in enumerate((linear, x.shape[1])):
            coef = _ridge_fit(x[fit, :columns], values[fit], weights[fit], linear)
            errors[model] += (weights[out] * (values[out] - x[out, :columns] @ coef).square()).sum()
    return bool(errors[1] < (1 - INTERACTION_GAIN) * errors[0])


class RegressionAdjustedState(LeverageState):
    """Running regression-adjusted estimate on Leverage SHAP's coalitions (module docstring).

    ``phi = phi(g) + phi_lev(v - g)``: ``g(S) = sum_t u_t prod_{i in t} z_i`` over the pairs and
    triples ``t`` of the ``K`` features with the largest Leverage SHAP values (``K`` such that the
    terms are at most :data:`INTERACTION_SHARE` of the sampled rows left over by the linear terms),
    fitted jointly with the linear terms by ridge-regularised least squares under the rows'
    Leverage SHAP weights; ``phi_i(g) = sum_{t ∋ i} u_t / |t|``. ``phi_lev`` is linear in the values
    and exact on additive games (and, with paired rows, on pairwise games), so the correction comes
    from the terms that Leverage SHAP gets wrong; with no terms it is Leverage SHAP itself."""

    def estimate(self):
        if not self.sampled:  # every size enumerated: Leverage SHAP is exact
            return super().estimate()
        rows, values = torch.cat(self.rows), torch.cat(self.values)
        ones = torch.ones((1, rows.shape[0]), dtype=torch.float64, device=self.device)
        ranking = self._solve(ones)[0].abs().argsort(descending=True)
        terms = [t for t in interaction_terms(ranking, INTERACTION_SHARE * max(0, rows.shape[0] - 2 - self.num))
                 if t.shape[0]]
        if not terms:
            return super().estimate()
        weights = leverage_weights(rows)
        weights[:2] = float(weights[2:].sum())  # the ends: nearly constraints
        products = torch.cat([_products(rows, t) for t in terms], 1)
        x = torch.cat((torch.ones_like(values).unsqueeze(1), rows.to(torch.float64), products), 1)
        if not _terms_pay(x, values, weights, 1 + self.num):
            return super().estimate()
        coef = _ridge_fit(x, values, weights, 1 + self.num)[1 + self.num:]
        phi_g = torch.zeros(self.num, dtype=torch.float64, device=self.device)
        start = 0
        for t in terms:
            u = coef[start:start + t.shape[0]] / t.shape[1]
            for column in t.T:
                phi_g.index_add_(0, column, u)
            start += t.shape[0]
        return self._estimate(values - products @ coef, phi_g)
