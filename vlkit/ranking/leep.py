"""LEEP, NCE and NLEEP: how well a "source" labelling predicts the target labels.

CLIP makes the source labelling natural: the zero-shot classifier over the task's class
names gives each image soft predictions theta(x) (C,) and a hard one argmax theta(x).

- LEEP (Nguyen, Hassner, Seeger, Archambeau, "LEEP: A New Measure to Evaluate
  Transferability of Learned Representations", ICML 2020, Eq. 1-2): the empirical joint
  P(y, z) = 1/N sum_{i: y_i = y} theta(x_i)_z, P(y | z) = P(y, z) / P(z), and
  LEEP = 1/N sum_i log sum_z P(y_i | z) theta(x_i)_z.
- NCE (Tran, Nguyen, Hassner, "Transferability and Hardness of Supervised
  Classification Tasks", ICCV 2019, Eq. 4-5): with hard source labels z_i,
  NCE = -H(Y | Z) = sum_{y,z} P(y, z) log (P(y, z) / P(z)), P the empirical joint.
- NLEEP (Li, Jia, Zhou, et al., "Ranking Neural Checkpoints", CVPR 2021, Sec. 3.2): LEEP
  with theta(x) the posterior of a Gaussian mixture fitted to PCA features (80% of the
  variance kept), one component per target class by default; diagonal covariances (a
  few-shot sample is too small for full ones).
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.errors import ShapeError
from vlkit.ranking.inputs import as_features, as_labels, one_hot

TINY = 1e-300  # keeps log(0) out of a probability that underflowed


def leep(source_probs: Any, labels: Any) -> float:
    """LEEP of (N, Z) source-label probabilities (rows sum to 1) for (N,) target labels."""
    theta = as_features(source_probs, "source probabilities")
    y = as_labels(labels, len(theta))
    if np.any(theta < 0) or not np.allclose(theta.sum(1), 1.0, atol=1e-6):
        raise ShapeError("source probabilities must be non-negative rows that sum to 1 (softmax outputs)")
    joint = one_hot(y).T @ theta / len(y)  # (C, Z) P(y, z)
    conditional = joint / np.maximum(joint.sum(0, keepdims=True), TINY)  # (C, Z) P(y | z)
    expected = theta @ conditional.T  # (N, C) EEP
    return float(np.log(np.maximum(expected[np.arange(len(y)), y], TINY)).mean())


def nce(source_labels: Any, labels: Any) -> float:
    """NCE = -H(Y | Z) of (N,) hard source labels z and (N,) target labels y (higher is better)."""
    y = as_labels(labels, len(np.asarray(source_labels)))
    z = np.asarray(source_labels).astype(np.int64)
    joint = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(joint, (y, z), 1.0 / len(y))  # (C, Z) P(y, z)
    marginal = joint.sum(0, keepdims=True)  # (1, Z) P(z)
    seen = joint > 0
    return float((joint[seen] * np.log(joint[seen] / np.broadcast_to(marginal, joint.shape)[seen])).sum())


def gmm_posteriors(features: np.ndarray, components: int, seed: int = 0, variance: float = 0.8) -> np.ndarray:
    """(N, V) posteriors of a diagonal Gaussian mixture with ``components`` on PCA(``variance``) features."""
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    reduced = PCA(n_components=variance, svd_solver="full").fit_transform(features)  # (N, d')
    gmm = GaussianMixture(n_components=min(components, len(features)), covariance_type="diag",
                          random_state=seed, reg_covar=1e-6).fit(reduced)
    return gmm.predict_proba(reduced)


def nleep(features: Any, labels: Any, components_per_class: int = 1, seed: int = 0) -> float:
    """NLEEP of (N, D) features for (N,) labels: LEEP on a PCA + GMM pseudo-source labelling."""
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    posteriors = gmm_posteriors(feats, components_per_class * (int(y.max()) + 1), seed)  # (N, V)
    return leep(posteriors, y)
