"""OTCE: optimal transport between a labelled source and the target, then conditional entropy.

Tan, Li, Huang, "OTCE: A Transferability Metric for Cross-Domain Cross-Task
Representations", CVPR 2021 (Sec. 3, Eq. 2-6). With source features/labels (x_s, y_s)
(n_s) and target features/labels (x_t, y_t) (n_t), uniform weights and the squared
Euclidean cost C_ij = ||x_s,i - x_t,j||^2:

    pi = argmin_{pi in U(1/n_s, 1/n_t)} <pi, C>      (exact OT, as the authors' code: ``ot.emd``)
    W = <pi, C>,  P(y_s, y_t) = sum_{i: y_s,i = y_s} sum_{j: y_t,j = y_t} pi_ij,
    H(Y_t | Y_s) = - sum P(y_s, y_t) log (P(y_s, y_t) / P(y_s)),
    OTCE = lambda_1 W + lambda_2 H(Y_t | Y_s) + b.

The lambdas are fitted on auxiliary tasks with known transfer accuracy, which a user
choosing a model does not have; the authors recommend the OT-based NCE, -H(Y_t | Y_s),
in that case, and that is the score here (W is returned beside it by :func:`otce_parts`).
Equal sample sizes (vlkit's few-shot samples: shots x classes on both sides) make the
plan a permutation, solved exactly by the Hungarian algorithm; other sizes by the linear
programme.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.errors import ShapeError
from vlkit.ranking.inputs import as_features, as_labels, one_hot


def transport_plan(cost: np.ndarray) -> np.ndarray:
    """(n_s, n_t) exact optimal plan with uniform marginals for a (n_s, n_t) cost."""
    n_s, n_t = cost.shape
    if n_s == n_t:
        from scipy.optimize import linear_sum_assignment

        rows, cols = linear_sum_assignment(cost)
        plan = np.zeros_like(cost)
        plan[rows, cols] = 1.0 / n_s
        return plan
    from scipy.optimize import linprog
    from scipy.sparse import csr_matrix, eye, kron, vstack

    ones_t, ones_s = csr_matrix(np.ones((1, n_t))), csr_matrix(np.ones((1, n_s)))
    equality = kron(eye(n_s), ones_t).tocsr()  # row sums
    equality = vstack([equality, kron(ones_s, eye(n_t))])  # then column sums
    bounds = np.concatenate([np.full(n_s, 1.0 / n_s), np.full(n_t, 1.0 / n_t)])
    solved = linprog(cost.reshape(-1), A_eq=equality, b_eq=bounds, bounds=(0, None), method="highs")
    return solved.x.reshape(n_s, n_t)


def otce_parts(source_features: Any, source_labels: Any, target_features: Any,
               target_labels: Any) -> dict[str, float]:
    """``{"wasserstein": W, "conditional_entropy": H(Y_t | Y_s), "otce": -H}`` for a source/target pair."""
    xs, xt = as_features(source_features, "source features"), as_features(target_features, "target features")
    if xs.shape[1] != xt.shape[1]:
        raise ShapeError(f"source features are {xs.shape[1]}-d but target features {xt.shape[1]}-d: "
                         "extract both with the same model")
    ys, yt = as_labels(source_labels, len(xs), "source labels"), as_labels(target_labels, len(xt), "target labels")
    cost = (xs ** 2).sum(1)[:, None] + (xt ** 2).sum(1)[None] - 2 * xs @ xt.T  # (n_s, n_t)
    cost = np.maximum(cost, 0.0)
    plan = transport_plan(cost)
    joint = one_hot(ys).T @ plan @ one_hot(yt)  # (C_s, C_t) P(y_s, y_t)
    marginal = joint.sum(1, keepdims=True)  # (C_s, 1) P(y_s)
    seen = joint > 0
    entropy = -float((joint[seen] * np.log(joint[seen] / np.broadcast_to(marginal, joint.shape)[seen])).sum())
    return {"wasserstein": float((plan * cost).sum()), "conditional_entropy": entropy, "otce": -entropy}


def otce(source_features: Any, source_labels: Any, target_features: Any, target_labels: Any) -> float:
    """OT-based NCE, -H(Y_t | Y_s) under the optimal plan (higher is better)."""
    return otce_parts(source_features, source_labels, target_features, target_labels)["otce"]
