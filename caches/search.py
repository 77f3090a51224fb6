"""Vectorised hyper-parameter search on validation for the cache models.

The authors search their grids with nested Python loops that recompute the
query-key affinities at every grid point. Here the affinities (and the zero-shot
logits) are computed once; each value of a non-linear parameter (beta, gamma in
APE's reweighting) costs one ``exp`` and one weighted sum by label (a scatter-add),
and every linear mixing
weight (alpha, TIP-X's gamma, GDA's alpha) is evaluated for all its values at once
by broadcasting, with the accuracy counted in the same pass.

Exactness: per grid point the logits are computed with the same tensor operations,
in the same order and on the same shapes as the method's own ``logits``, so the
validation accuracy of every grid point is the one a brute-force loop computes.

Ties (a departure from the authors' code, which keeps the first best point in loop
order, ``if acc > best``): among the grid points tied at the best validation accuracy,
the one nearest the grid's centre wins (distance in grid steps, each axis scaled to
[-1/2, 1/2] so every hyper-parameter counts alike); points equally near keep loop order.
Reason: a small validation sample (1-4 images per class at few shots) ties over wide
plateaus, and the first point in loop order is then the grid's low corner (the smallest
beta and alpha), a choice made by the loop, not the data. The authors centre each
dataset's grid on the values they found to work, so the centre is the least committal
of the equally good points (issue 21).
"""
from __future__ import annotations

from typing import Sequence

import torch

from vlkit.caches.common import Affinity, LabelValues, cache_logits, cache_weights, combine

_CHUNK = 1 << 20  # elements of the broadcast logits evaluated at once (~4 MB: stays in cache)


def correct_counts(base: torch.Tensor, term: torch.Tensor, scales: Sequence[float],
                   labels: torch.Tensor) -> torch.Tensor:
    """Correct predictions of ``base + s * term`` for every ``s`` in ``scales``.

    ``base`` and ``term`` are (..., M, C) with broadcastable leading grid axes; returns
    (..., S) int64 counts. Rows are processed in chunks to bound memory.
    """
    s = torch.tensor(list(scales), dtype=term.dtype)[:, None, None]  # (S, 1, 1)
    lead = torch.broadcast_shapes(base.shape[:-2], term.shape[:-2])
    m, c = term.shape[-2:]
    rows = max(1, _CHUNK // max(1, lead.numel() * len(scales) * c))
    total = torch.zeros(*lead, len(scales), dtype=torch.long)
    for start in range(0, m, rows):
        b = base[..., start:start + rows, :].unsqueeze(-3)  # (..., 1, m', C)
        t = term[..., start:start + rows, :].unsqueeze(-3)  # (..., 1, m', C)
        pred = (b + s * t).argmax(dim=-1)  # (..., S, m')
        total += (pred == labels[start:start + rows]).sum(dim=-1)
    return total


def first_best(counts: torch.Tensor) -> tuple[int, ...]:
    """Index of the first maximum of ``counts`` in row-major (loop) order (the authors' rule)."""
    flat = int(torch.argmax(counts.reshape(-1)))  # argmax returns the first maximal element
    return tuple(int(i) for i in torch.unravel_index(torch.tensor(flat), counts.shape))


def central_best(counts: torch.Tensor) -> tuple[int, ...]:
    """Index of the maximum of ``counts``; among tied maxima the one nearest the grid's centre.

    Distance is measured in grid steps with each axis scaled to [-1/2, 1/2] (an axis of one
    value counts 0); equally near points keep row-major (loop) order.
    """
    tied = (counts == counts.max()).nonzero()  # (T, ndim), row-major order
    shape = torch.tensor(counts.shape, dtype=torch.float64)
    centre, span = (shape - 1) / 2, (shape - 1).clamp(min=1)
    distance = (((tied - centre) / span) ** 2).sum(dim=-1)  # (T,)
    return tuple(int(i) for i in tied[int(torch.argmin(distance))])  # argmin: the first of equals


def search_tip(clip: torch.Tensor, aff: Affinity, values: LabelValues, labels: torch.Tensor,
               betas: Sequence[float], alphas: Sequence[float]) -> dict:
    """Tip-Adapter's grid: loop order beta (outer), alpha (inner); logits ``clip + alpha * cache``.

    The cache logits of a group of betas are stacked (B', M, C) and all their alphas are
    scored in one broadcast.
    """
    group = max(1, _CHUNK // max(1, clip.numel()))
    counts = []
    for start in range(0, len(betas), group):
        caches = torch.stack([cache_logits(aff, b, values) for b in betas[start:start + group]])  # (B', M, C)
        counts.append(correct_counts(clip, caches, alphas, labels))  # (B', A)
    counts = torch.cat(counts)  # (B, A)
    ib, ia = central_best(counts)
    return {"beta": betas[ib], "alpha": alphas[ia], "val_accuracy": _pct(counts[ib, ia], labels),
            "grid_points": counts.numel(), "tied_points": int((counts == counts[ib, ia]).sum())}


def search_ape(clip: torch.Tensor, aff: Affinity, values: LabelValues, kl: torch.Tensor, labels: torch.Tensor,
               betas: Sequence[float], alphas: Sequence[float], gammas: Sequence[float]) -> dict:
    """APE's grid: loop order beta, alpha, gamma; cache ``exp(-beta (1 - A)) @ (L * exp(gamma * kl))``.

    The reweighted values of every gamma are built once; per beta the affinity weights
    are computed once and combined with each of them.
    """
    soft = [values.scaled(torch.exp(g * kl)) for g in gammas]  # G x diag(exp(gamma * kl)) L
    counts = torch.zeros(len(betas), len(alphas), len(gammas), dtype=torch.long)
    for ib, b in enumerate(betas):
        weights = cache_weights(aff, b)
        caches = torch.stack([combine(weights, v, aff.ids) for v in soft])  # (G, M, C)
        counts[ib] = correct_counts(clip, caches, alphas, labels).T  # (A, G)
    ib, ia, ig = central_best(counts)
    return {"beta": betas[ib], "alpha": alphas[ia], "gamma": gammas[ig],
            "val_accuracy": _pct(counts[ib, ia, ig], labels), "grid_points": counts.numel()}


def search_tipx(clip: torch.Tensor, aff: Affinity, values: LabelValues, kl: torch.Tensor,
                labels: torch.Tensor, alphas: Sequence[float], betas: Sequence[float],
                gammas: Sequence[float]) -> dict:
    """TIP-X's grid: loop order alpha, beta, gamma; logits ``clip + alpha * cache + gamma * kl``."""
    a = torch.tensor(list(alphas), dtype=clip.dtype)[:, None, None]  # (A, 1, 1)
    per_beta = []
    for b in betas:
        base = clip + a * cache_logits(aff, b, values)  # (A, M, C)
        per_beta.append(correct_counts(base, kl, gammas, labels))  # (A, G)
    counts = torch.stack(per_beta, dim=1)  # (A, B, G)
    ia, ib, ig = central_best(counts)
    return {"alpha": alphas[ia], "beta": betas[ib], "gamma": gammas[ig],
            "val_accuracy": _pct(counts[ia, ib, ig], labels), "grid_points": counts.numel()}


def search_linear(clip: torch.Tensor, term: torch.Tensor, labels: torch.Tensor, alphas: Sequence[float]) -> dict:
    """One mixing weight: ``clip + alpha * term`` (GDA)."""
    counts = correct_counts(clip, term, alphas, labels)  # (A,)
    (ia,) = central_best(counts)
    return {"alpha": alphas[ia], "val_accuracy": _pct(counts[ia], labels), "grid_points": counts.numel()}


def _pct(count: torch.Tensor, labels: torch.Tensor) -> float:
    return 100.0 * float(count) / max(len(labels), 1)
