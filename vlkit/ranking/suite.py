"""Every metric on one model's few-shot features: the table ``vlkit rank`` prints a column of."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from vlkit.errors import ShapeError
from vlkit.ranking.gbc import gbc
from vlkit.ranking.hscore import hscore, shrinkage_hscore
from vlkit.ranking.inputs import as_features, as_labels, softmax
from vlkit.ranking.leep import leep, nce, nleep
from vlkit.ranking.logme import logme
from vlkit.ranking.otce import otce_parts
from vlkit.ranking.sfda import sfda
from vlkit.ranking.text_score import text_separation


@dataclass(frozen=True)
class MetricInfo:
    """A metric's name, the paper it transcribes, and what it reads."""

    name: str
    paper: str
    reads: str  # "features", "zero-shot", "text" or "source"


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("logme", "You et al., ICML 2021", "features"),
    MetricInfo("leep", "Nguyen et al., ICML 2020 (zero-shot soft predictions as source labels)", "zero-shot"),
    MetricInfo("nce", "Tran et al., ICCV 2019 (zero-shot hard predictions as source labels)", "zero-shot"),
    MetricInfo("hscore", "Bao et al., ICIP 2019", "features"),
    MetricInfo("shrinkage_hscore", "Ibrahim et al., ECML-PKDD 2022", "features"),
    MetricInfo("gbc", "Pándy et al., CVPR 2022", "features"),
    MetricInfo("nleep", "Li et al., CVPR 2021", "features"),
    MetricInfo("sfda", "Shao et al., ECCV 2022", "features"),
    MetricInfo("text_separation", "LOVM inter-class similarity, negated (Zohar et al., NeurIPS 2023)", "text"),
    MetricInfo("otce", "Tan et al., CVPR 2021 (OT-based NCE, -H(Yt|Ys))", "source"),
)}

FEATURE_METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "logme": logme, "hscore": hscore, "shrinkage_hscore": shrinkage_hscore, "gbc": gbc, "sfda": sfda,
}


def zero_shot_probs(features: np.ndarray, text_weights: np.ndarray, logit_scale: float) -> np.ndarray:
    """(N, C) softmax of the zero-shot classifier: logit_scale * cos(x, w_c)."""
    unit_x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    unit_w = text_weights / np.maximum(np.linalg.norm(text_weights, axis=1, keepdims=True), 1e-12)
    return softmax(logit_scale * unit_x @ unit_w.T)


def compute_metrics(features: Any, labels: Any, text_weights: Any, logit_scale: float = 100.0,
                    source: tuple[Any, Any] | None = None, seed: int = 0) -> dict[str, float]:
    """Every metric of :data:`METRICS` for one model (higher is better for each).

    ``features`` (N, D) and ``labels`` (N,) are the few-shot sample; ``text_weights`` (C, D)
    the zero-shot classifier of the task's class names; ``source`` = (features (M, D),
    labels (M,)) of a labelled source domain, for OTCE (left out without one).
    """
    feats = as_features(features)
    y = as_labels(labels, len(feats))
    weights = as_features(text_weights, "text weights")
    if weights.shape[1] != feats.shape[1]:
        raise ShapeError(f"text weights are {weights.shape[1]}-d but image features {feats.shape[1]}-d: "
                         "they must come from the same model")
    scores = {name: fn(feats, y) for name, fn in FEATURE_METRICS.items()}
    probs = zero_shot_probs(feats, weights, logit_scale)  # (N, C)
    scores["leep"] = leep(probs, y)
    scores["nce"] = nce(probs.argmax(1), y)
    scores["nleep"] = nleep(feats, y, seed=seed)
    scores["text_separation"] = text_separation(weights)
    if source is not None:
        scores["otce"] = otce_parts(source[0], source[1], feats, y)["otce"]
    return {name: scores[name] for name in METRICS if name in scores}
