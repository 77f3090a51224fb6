"""H-score and its shrinkage-regularised form.

- H-score (Bao, Li, Huang, et al., "An Information-Theoretic Approach to Transferability
  in Task Transfer Learning", ICIP 2019, Def. 2): H(f) = tr(cov(f)^+ cov(E[f | Y])), where
  E[f | Y] replaces each feature by its class mean and ^+ is the pseudo-inverse (the
  authors' code: ``pinv(rcond=1e-15)``, covariances with 1/(N-1)). With fewer samples
  than dimensions cov(f) is singular and H(f) tends to C - 1 for every model, which is
  why the shrinkage form exists.
- Shrinkage H-score (Ibrahim, Ponomareva, Mazumder, "Newer is not always better:
  Rethinking transferability metrics, their peculiarities, stability and performance",
  ECML-PKDD 2022, Eq. 5): H_a(f) = tr(cov_a(f)^-1 (1 - a) cov(E[f | Y])) with
  cov_a(f) = (1 - a) cov(f) + a (tr cov(f) / D) I and a the Ledoit-Wolf shrinkage
  (scikit-learn's ``LedoitWolf``; covariances with 1/N as that estimator uses).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.ranking.inputs import as_features, as_labels, one_hot


def class_mean_features(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(N, D): each row replaced by the mean of its class."""
    hot = one_hot(labels)  # (N, C)
    counts = np.maximum(hot.sum(0), 1.0)  # (C,)
    means = hot.T @ features / counts[:, None]  # (C, D)
    return means[labels]


def _cov(x: np.ndarray, ddof: int) -> np.ndarray:
    centred = x - x.mean(0, keepdims=True)
    return centred.T @ centred / (len(x) - ddof)


def hscore(features: Any, labels: Any) -> float:
    """H-score of (N, D) features for (N,) labels (higher is better)."""
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    cov_f, cov_g = _cov(feats, 1), _cov(class_mean_features(feats, y), 1)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g))


def shrinkage_hscore(features: Any, labels: Any) -> float:
    """Shrinkage (Ledoit-Wolf) H-score of (N, D) features for (N,) labels (higher is better)."""
    from sklearn.covariance import LedoitWolf

    feats = as_features(features)
    y = as_labels(labels, len(feats))
    estimator = LedoitWolf(assume_centered=False).fit(feats)
    alpha = float(estimator.shrinkage_)
    cov_g = _cov(class_mean_features(feats, y), 0)  # (D, D)
    return float(np.trace(np.linalg.solve(estimator.covariance_, (1 - alpha) * cov_g)))
