"""A text-only score for CLIP: how far apart the class names' text embeddings are.

LOVM (Zohar, Huang, Wang, Yeung, "LOVM: Language-Only Vision Model Selection", NeurIPS
2023 Datasets and Benchmarks, Sec. 4.2) ranks models without images from text-derived
scores; this is its **inter-class similarity** granularity score: for the zero-shot
classifier's class weights w_c (the template-averaged, normalised text embeddings),

    similarity = 1/C sum_c max_{c' != c} cos(w_c, w_c'),

the mean over classes of the cosine to the nearest other class. Near classes are hard to
tell apart, so the score vlkit ranks by is its negation (higher is better):
``text_separation = -similarity``. It needs no image and no label.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from vlkit.errors import DataError
from vlkit.ranking.inputs import as_features


def text_separation(text_weights: Any) -> float:
    """Minus LOVM's inter-class similarity of (C, D) class text embeddings (higher is better)."""
    weights = as_features(text_weights, "text weights")
    if len(weights) < 2:
        raise DataError(f"text weights hold {len(weights)} class(es): a score needs at least 2 classes")
    unit = weights / np.maximum(np.linalg.norm(weights, axis=1, keepdims=True), 1e-12)
    cosine = unit @ unit.T  # (C, C)
    np.fill_diagonal(cosine, -np.inf)
    return float(-cosine.max(axis=1).mean())
