"""Stratified SVARM (Kolpaczki, Bengs, Muschalik & Hüllermeier, "Approximating the Shapley value
without marginal contributions", AAAI 2024).

The Shapley value splits into strata by coalition size ``l``::

    phi_i = 1/F sum_{l=1..F} E[v(S) | |S| = l, i in S]  -  1/F sum_{l=0..F-1} E[v(S) | |S| = l, i not in S]

Every evaluated coalition of size ``l`` updates the ``l``-stratum mean "with ``i``" of all its
members and "without ``i``" of all the others: no marginal contributions, every evaluation serves
all ``F`` features. The strata of sizes 0 and F are exact (one evaluation each); sizes 1 and F-1
are enumerated (``2 F`` evaluations) when the budget has room for more than that, as in the
paper's warm-up; the other sizes are drawn uniformly (``2 .. F-2``) with uniform members
(independent draws, so that the cells' errors are nearly independent). An empty cell takes its
stratum's mean (the same value enters both sums and cancels when the stratum is empty). Standard
errors combine the cells' sample variances (pooled per stratum for cells with fewer than 2
samples), treating the cells as independent.
"""
from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["StratifiedState"]


class StratifiedState:
    def __init__(self, game, num_features: int, generator, device):
        if num_features < 2:
            raise ValueError(f"stratified sampling needs at least 2 features, got {num_features}")
        self.game, self.num, self.gen, self.device = game, num_features, generator, device
        shape = (num_features + 1, num_features)
        self.sums = {k: torch.zeros(shape, dtype=torch.float64, device=device) for k in ("in", "out")}
        self.squares = {k: torch.zeros(shape, dtype=torch.float64, device=device) for k in ("in", "out")}
        self.counts = {k: torch.zeros(shape, dtype=torch.float64, device=device) for k in ("in", "out")}
        self.n_evaluations = 0
        self.warm = False
        ends = torch.stack((torch.zeros(num_features, dtype=torch.bool, device=device),
                            torch.ones(num_features, dtype=torch.bool, device=device)))
        self._add(ends)

    def _add(self, rows: Tensor) -> None:
        values = self.game(rows)
        self.n_evaluations += rows.shape[0]
        z = rows.to(torch.float64)
        onehot = torch.nn.functional.one_hot(rows.sum(-1), self.num + 1).to(torch.float64).T  # [F+1, R]
        for key, member in (("in", z), ("out", 1 - z)):
            self.sums[key] += onehot @ (member * values.unsqueeze(1))
            self.squares[key] += onehot @ (member * values.square().unsqueeze(1))
            self.counts[key] += onehot @ member

    def step(self, budget: int) -> None:
        num = self.num
        if not self.warm and budget > 2 * num:
            eye = torch.eye(num, dtype=torch.bool, device=self.device)
            self._add(torch.cat((eye, ~eye)))
            self.warm = True
            budget -= 2 * num
        low, high = (2, num - 2) if self.warm else (1, num - 1)
        if high < low or budget < 1:
            return
        sizes = torch.randint(low, high + 1, (budget,), generator=self.gen, device=self.device)
        ranks = torch.rand((budget, num), generator=self.gen, device=self.device).argsort(-1).argsort(-1)
        self._add(ranks < sizes.view(-1, 1))

    def _cells(self, key: str):
        sums, squares, counts = self.sums[key], self.squares[key], self.counts[key]
        stratum_n = counts.sum(1, keepdim=True)
        stratum_mean = torch.where(stratum_n > 0, sums.sum(1, keepdim=True) / stratum_n.clamp(min=1), 0.0)
        mean = torch.where(counts > 0, sums / counts.clamp(min=1), stratum_mean)
        var = (squares - counts * mean.square()).clamp(min=0) / (counts - 1).clamp(min=1)
        pooled = ((squares.sum(1, keepdim=True) - stratum_n * stratum_mean.square()).clamp(min=0)
                  / (stratum_n - 1).clamp(min=1))
        var = torch.where(counts >= 2, var, pooled.expand_as(var))
        var_of_mean = torch.where(counts > 0, var / counts.clamp(min=1), torch.where(stratum_n > 0, pooled, 0.0))
        return mean, var_of_mean

    def estimate(self):
        num = self.num
        mean_in, var_in = self._cells("in")
        mean_out, var_out = self._cells("out")
        exact = [0, num] + ([1, num - 1] if self.warm else [])  # strata seen in full
        var_in[exact], var_out[exact] = 0.0, 0.0
        phi = (mean_in[1:].sum(0) - mean_out[:num].sum(0)) / num
        var = (var_in[1:].sum(0) + var_out[:num].sum(0)) / num ** 2
        sampled = self.counts["in"][1:num].sum() > 0 or num == 1
        stderr = var.sqrt() if sampled or self.warm else torch.full_like(phi, float("inf"))
        return phi, stderr
