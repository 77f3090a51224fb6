"""SFDA: Self-challenging Fisher Discriminant Analysis.

Shao, Zhao, Ge, et al., "Not All Models Are Equal: Predicting Model Transferability in a
Self-challenging Fisher Space", ECCV 2022 (Sec. 3.2-3.3, Eq. 3-9), as the authors' code
computes it:

1. Regularised Fisher discriminant: within-class scatter S_W = sum_c pi_c cov(X_c) (1/N_c),
   shrinkage lambda = exp(-5 sigma_max(S_W)) (largest eigenvalue; the code estimates it with
   three power iterations), regularised R(S) = (1 - lambda) S + lambda (tr S / D) I,
   between-class scatter S_B = R(cov(X)) - R(S_W). The discriminant directions V solve
   S_B v = eta R(S_W) v; the Bayes classifier in Fisher space over all of them
   (V V^T = R(S_W)^-1) is  delta_c(x) = x^T R(S_W)^-1 mu_c - 1/2 mu_c^T R(S_W)^-1 mu_c + log pi_c,
   p(y | x) = softmax(delta(x)).
2. Self-challenge (ConfMix): the probabilities are softened once more (softmax of the
   softmax), and each x_i of class y moves toward the mean of the *other* classes' means,
   x_i <- p_i x_i + (1 - p_i) mean_{c != y} mu_c with p_i = p(y_i | x_i).
3. The same discriminant (same lambda) refitted on the mixed features; SFDA is the mean
   probability of the true class, 1/N sum_i p(y_i | x~_i) (no log, as the paper).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.ranking.inputs import as_features, as_labels, one_hot, softmax


def _fisher_probs(features: np.ndarray, hot: np.ndarray, shrinkage: float | None) -> tuple[np.ndarray, float]:
    """(N, C) Bayes posteriors of the regularised Fisher discriminant, and the shrinkage used."""
    n, d = features.shape
    counts = hot.sum(0)  # (C,)
    priors = counts / n
    means = hot.T @ features / counts[:, None]  # (C, D)
    centred = features - hot @ means
    within = (centred.T * (hot @ (priors / counts))) @ centred  # (D, D) sum_c pi_c cov(X_c)
    if shrinkage is None:
        shrinkage = max(float(np.exp(-5 * np.linalg.eigvalsh(within)[-1])), 1e-10)
    scale = max(np.trace(within) / d, 1e-12)
    regularised = (1 - shrinkage) * within + shrinkage * scale * np.eye(d)
    coef = np.linalg.solve(regularised, means.T).T  # (C, D) R(S_W)^-1 mu_c
    scores = features @ coef.T - 0.5 * (means * coef).sum(1) + np.log(priors)  # (N, C)
    return softmax(scores), shrinkage


def sfda(features: Any, labels: Any) -> float:
    """SFDA of (N, D) features for (N,) labels: mean true-class probability after ConfMix (higher is better)."""
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    hot = one_hot(y)
    hot = hot[:, hot.sum(0) > 0]
    y = hot.argmax(1)
    probs, shrinkage = _fisher_probs(feats, hot, None)
    soft = softmax(probs)  # the authors' second softmax, which softens the mixing weights
    means = hot.T @ feats / hot.sum(0)[:, None]  # (C, D)
    others = (means.sum(0, keepdims=True) - means) / (len(means) - 1)  # (C, D) mean of the other means
    own = soft[np.arange(len(y)), y][:, None]  # (N, 1)
    mixed = own * feats + (1 - own) * others[y]
    final, _ = _fisher_probs(mixed, hot, shrinkage)
    return float(final[np.arange(len(y)), y].mean())
