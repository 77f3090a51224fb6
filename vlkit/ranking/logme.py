"""LogME: the log maximum evidence of a linear model on frozen features.

You, Liu, Wang, Long, "LogME: Practical Assessment of Pre-trained Models for Transfer
Learning", ICML 2021 (Eq. 2 and Algorithm 1). For class c with targets y = 1[label = c]
(N,), a Gaussian prior w ~ N(0, alpha^-1 I) and noise precision beta give the evidence

    L(alpha, beta) = N/2 log beta + D/2 log alpha - N/2 log 2 pi
                     - beta/2 ||F m - y||^2 - alpha/2 m^T m - 1/2 log |A|,
    A = alpha I + beta F^T F,   m = beta A^-1 F^T y.

Its maximiser is the fixed point (MacKay) gamma = sum_i beta s_i / (alpha + beta s_i),
alpha = gamma / m^T m, beta = (N - gamma) / ||F m - y||^2, with s_i the eigenvalues of
F^T F (squared singular values of F). LogME is the maximum evidence divided by N,
averaged over classes.

Computed for every class at once from one thin SVD of F: with z = U^T y, m^T m and the
residual are sums over the singular directions (the fixed-point paper, You et al. 2021
"Ranking and Tuning Pre-trained Models", Algorithm 2). Three choices differ from the
authors' code, so that the value is the exact maximum evidence: the iteration runs to a
relative change of alpha/beta below 1e-10 (the code stops at 1e-3 after at most 11 steps
and adds 1e-5 to denominators); log|A| counts the D - rank(F) eigenvalues equal to alpha
(the code's evidence omits them when N < D); and when the maximum lies at beta -> inf
(N <= D, few-shot) its closed-form limit is taken (the code's 1e-5 caps beta instead), as
is the alpha -> inf limit (w = 0) when it is higher than the fixed point's value.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.ranking.inputs import as_features, as_labels, one_hot


def evidence_per_sample(alpha: np.ndarray, beta: np.ndarray, sigma: np.ndarray, z2: np.ndarray,
                        outside: np.ndarray, n: int) -> np.ndarray:
    """L(alpha, beta) / N for each target column, in the sample-space form (no D x D matrix).

    y ~ N(0, F F^T / alpha + I / beta): along singular direction i the variance is
    s_i / alpha + 1 / beta, along the N - r directions outside F's columns 1 / beta. This is
    the weight-space evidence of the docstring above, rewritten; it stays finite for huge beta.
    """
    var = sigma[:, None] / alpha + 1.0 / beta  # (r, K)
    rest = n - len(sigma)
    log_p = -0.5 * (np.log(var) + z2 / var).sum(0) - n / 2 * np.log(2 * np.pi)
    if rest:
        log_p = log_p + rest / 2 * np.log(beta) - beta / 2 * outside
    return log_p / n


def logme_fixed_point(features: np.ndarray, targets: np.ndarray, max_iter: int = 2000,
                      tol: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maximum evidence per target column: (evidence / N, alpha, beta), each (K,).

    ``features`` (N, D) float64, ``targets`` (N, K) float64 (one column per class). When
    N <= rank(F) (fewer images than dimensions, the few-shot case) y lies in F's column
    space and the evidence can rise all the way to beta -> infinity (no noise); the fixed
    point then walks towards that boundary, and the value returned is the larger of the
    last iterate's and the closed-form limit (beta = inf, alpha = N / sum_i z_i^2 / s_i),
    with beta reported as inf. The other boundary, alpha -> inf (the features explain nothing
    of y, which is then pure noise), is compared the same way (alpha reported as inf), so the
    value is the global maximum of the evidence, not only a stationary point of it.
    """
    n, _ = features.shape
    u, s, _ = np.linalg.svd(features, full_matrices=False)  # (N, r), (r,)
    keep = s > s.max() * 1e-10 if s.size else s > 0
    u, sigma = u[:, keep], s[keep] ** 2  # (N, r), (r,)
    z2 = (u.T @ targets) ** 2  # (r, K)
    rest = n - len(sigma)
    outside = np.maximum((targets ** 2).sum(0) - z2.sum(0), 0.0)  # (K,) part of y orthogonal to F's columns
    k = targets.shape[1]
    limit, alpha_inf = np.full(k, -np.inf), np.zeros(k)
    if rest == 0:  # y in F's column space: the noise-free limit beta -> inf, alpha = N / sum_i z_i^2 / s_i
        alpha_inf = n / (z2 / sigma[:, None]).sum(0)
        limit = (-0.5 * (np.log(sigma[:, None] / alpha_inf) + alpha_inf * z2 / sigma[:, None]).sum(0)
                 - n / 2 * np.log(2 * np.pi)) / n
    floor = 1e-12 * sigma.min()  # alpha / beta this small: at the beta -> inf boundary
    alpha, beta = np.ones(k), np.ones(k)
    active = np.ones(k, dtype=bool)
    for _ in range(max_iter):
        t = alpha / beta  # (K,)
        shrink = t / (sigma[:, None] + t)  # (r, K)
        gamma = (1 - shrink).sum(0)  # effective number of parameters
        m2 = (sigma[:, None] * z2 / (sigma[:, None] + t) ** 2).sum(0)  # m^T m
        res2 = (z2 * shrink ** 2).sum(0) + outside  # ||F m - y||^2
        alpha = np.where(active, gamma / m2, alpha)
        beta = np.where(active, (shrink.sum(0) + rest) / np.where(active, res2, 1.0), beta)  # N - gamma, no cancellation
        converged = np.abs(alpha / beta - t) <= tol * t
        gap = np.abs(evidence_per_sample(alpha, beta, sigma, z2, outside, n) - limit)
        at_boundary = (rest == 0) & ((gap <= 1e-13 * np.abs(limit)) | (alpha / beta < floor))
        active &= ~(converged | at_boundary)
        if not active.any():
            break
    evidence = evidence_per_sample(alpha, beta, sigma, z2, outside, n)
    at_limit = (rest == 0) & (limit > evidence - 1e-13 * np.abs(evidence))
    evidence = np.where(at_limit, limit, evidence)
    alpha, beta = np.where(at_limit, alpha_inf, alpha), np.where(at_limit, np.inf, beta)
    # the other boundary, alpha -> inf (w = 0: y is noise with beta = N / ||y||^2); the fixed point can stop
    # at a stationary point below it when the features carry nothing about y
    noise_only = -0.5 * np.log(2 * np.pi * (targets ** 2).sum(0) / n) - 0.5  # (K,) per sample
    no_signal = noise_only > evidence
    evidence = np.where(no_signal, noise_only, evidence)
    alpha = np.where(no_signal, np.inf, alpha)
    beta = np.where(no_signal, n / (targets ** 2).sum(0), beta)
    return evidence, alpha, beta


def logme(features: Any, labels: Any) -> float:
    """LogME of (N, D) features for (N,) labels: mean over classes of max evidence / N (higher is better)."""
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    evidence, _, _ = logme_fixed_point(feats, one_hot(y))
    return float(evidence.mean())
