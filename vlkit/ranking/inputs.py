"""Input checks shared by the transferability metrics: features, labels, class counts."""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.errors import DataError, ShapeError


def as_features(features: Any, name: str = "features") -> np.ndarray:
    """A 2-D float64 array (N, D); anything else is a one-line ShapeError."""
    array = np.asarray(features.detach().cpu() if hasattr(features, "detach") else features, dtype=np.float64)
    if array.ndim != 2:
        raise ShapeError(f"{name} must be (N, D), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ShapeError(f"{name} hold NaN or infinite values: re-extract them")
    return array


def as_labels(labels: Any, n: int, name: str = "labels") -> np.ndarray:
    """(N,) int64 labels 0..C-1 with at least 2 classes present."""
    array = np.asarray(labels.detach().cpu() if hasattr(labels, "detach") else labels)
    if array.shape != (n,):
        raise ShapeError(f"{name} must be ({n},) for {n} feature rows, got shape {array.shape}")
    array = array.astype(np.int64)
    if n and array.min() < 0:
        raise ShapeError(f"{name} must be 0..C-1, got {array.min()}")
    if len(np.unique(array)) < 2:
        raise DataError(f"{name} hold fewer than 2 classes ({len(np.unique(array))}): a transferability "
                        "score needs at least 2 classes to separate")
    return array


def one_hot(labels: np.ndarray, classes: int | None = None) -> np.ndarray:
    """(N,) labels -> (N, C) float64 one-hot (C = max label + 1 unless given)."""
    classes = int(labels.max()) + 1 if classes is None else classes
    out = np.zeros((len(labels), classes))
    out[np.arange(len(labels)), labels] = 1.0
    return out


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, K) logits."""
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)
