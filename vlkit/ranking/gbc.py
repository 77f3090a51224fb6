"""GBC: Gaussian Bhattacharyya Coefficient, the overlap of per-class Gaussians.

Pándy, Agostinelli, Uijlings, Ferrari, Mensink, "Transferability Estimation using
Bhattacharyya Class Separability", CVPR 2022 (Eq. 2-4). Each class c is a Gaussian with
the class mean mu_c and the diagonal of its (population) covariance s_c; for two classes

    D_B = 1/8 sum_d (mu_i - mu_j)_d^2 / s_d + 1/2 [sum_d log s_d - 1/2 (sum_d log s_i,d + sum_d log s_j,d)],
    s = (s_i + s_j) / 2,

    GBC = - sum_{i != j} exp(-D_B(c_i, c_j))   (ordered pairs; 0 is the best, perfectly apart).

``eps`` (1e-6) is added to every variance so that one image per class (zero variance) still
gives a finite value; the paper's PCA to 64 dimensions is left out (vlkit's features are
32-512 wide).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.ranking.inputs import as_features, as_labels, one_hot


def gbc(features: Any, labels: Any, eps: float = 1e-6) -> float:
    """GBC of (N, D) features for (N,) labels, diagonal Gaussians (higher, i.e. nearer 0, is better)."""
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    hot = one_hot(y)  # (N, C)
    present = hot.sum(0) > 0
    hot = hot[:, present]
    counts = hot.sum(0)  # (C,)
    means = hot.T @ feats / counts[:, None]  # (C, D)
    centred = feats - hot @ means  # (N, D) each row minus its class mean
    variances = hot.T @ centred ** 2 / counts[:, None] + eps  # (C, D) population variance
    avg = (variances[:, None] + variances[None]) / 2  # (C, C, D)
    first = ((means[:, None] - means[None]) ** 2 / avg).sum(-1) / 8  # (C, C)
    log_var = np.log(variances).sum(-1)  # (C,)
    second = 0.5 * (np.log(avg).sum(-1) - 0.5 * (log_var[:, None] + log_var[None]))
    coefficient = np.exp(-(first + second))  # (C, C)
    return float(-(coefficient.sum() - np.trace(coefficient)))
