"""Shared pieces of the cache models: keys from cached views, one-hot values, affinities.

A cache is ``N`` keys (L2-normalised image features) with values (N, C). Affinities
between queries and keys are exact and dense for small caches, and top-k sparse from
a :class:`vlkit.features.index.VectorIndex` for large ones (``sparse_above`` entries); with
``top_k >= N`` the two agree to floating-point tolerance.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlkit.errors import ShapeError
from vlkit.features.index import VectorIndex
from vlkit.methods.logit_scale import check_logit_scale
from vlkit.methods.task import Task


def cache_keys(train_features: torch.Tensor, norms: torch.Tensor | None = None) -> torch.Tensor:
    """(N, V, D) cached views -> (N, D) keys: the mean of the augmented views, L2-normalised.

    Tip-Adapter (Sec. 3.2; its code's cache builder, which APE and TIP-X reuse) averages
    the encoder's raw outputs over 10 augmented passes and then normalises. With
    ``norms`` (N, V), each view's norm before normalising (``Task.train_norms``, filled
    from the feature store), the raw views are rebuilt as ``norm * unit`` and this is that
    formula: ``normalize(mean_v(norm_v * unit_v))``. Without norms (``Task.from_arrays``,
    plain arrays) the views are normalised, averaged and renormalised: every view weighs
    the same instead of in proportion to its norm. Views
    1.. are the augmented passes; view 0 (the eval transform) is used only when no
    augmented view exists.
    """
    first = 1 if train_features.shape[1] > 1 else 0
    views = F.normalize(train_features[:, first:], dim=-1)  # (N, V', D)
    if norms is not None:
        if norms.shape != train_features.shape[:2]:
            raise ShapeError(f"norms must be (N, V) = {tuple(train_features.shape[:2])}, got {tuple(norms.shape)}")
        views = views * norms[:, first:, None].to(views.dtype)  # raw views
    return F.normalize(views.mean(dim=1), dim=-1)  # (N, D)


def one_hot(labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N,) int labels -> (N, C) float32 one-hot values."""
    return F.one_hot(labels.long(), num_classes).float()


def normalized_val(task: Task) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(M, D) L2-normalised validation features and (M,) labels, or None without validation."""
    if not task.has_val:
        return None
    return F.normalize(task.val_features, dim=-1), task.val_labels


def zero_shot_logits(x: torch.Tensor, text_weights: torch.Tensor, scale: float) -> torch.Tensor:
    """``scale * x @ W.T``: (M, D) normalised queries -> (M, C)."""
    return scale * x @ text_weights.T


def linear_grid(scale: float, steps: int, start: float) -> list[float]:
    """The authors' search grids: ``[start + i * (scale - start) / steps for i in range(steps)]``."""
    return [i * (scale - start) / steps + start for i in range(steps)]


@dataclass
class Affinity:
    """Query-key similarities: dense (M, N) or sparse top-k ``scores``/``ids`` (M, k)."""

    scores: torch.Tensor
    ids: torch.Tensor | None = None  # None: dense
    _distance: torch.Tensor | None = None

    @property
    def sparse(self) -> bool:
        """Whether these are top-k affinities from the index."""
        return self.ids is not None

    @property
    def distance(self) -> torch.Tensor:
        """``1 - scores``, computed once (a search reuses it for every beta)."""
        if self._distance is None:
            self._distance = 1 - self.scores
        return self._distance


class KeyStore:
    """The keys of a cache and the way queries meet them (dense matmul or the index)."""

    def __init__(self, keys: torch.Tensor, sparse_above: int, top_k: int) -> None:
        self.keys = keys  # (N, D)
        self.sparse_above, self.top_k = sparse_above, top_k
        self.index: VectorIndex | None = None
        if len(keys) > sparse_above:
            self.index = VectorIndex.build(keys.float().contiguous(), kind="auto")

    def add(self, keys: torch.Tensor) -> None:
        """Append (n, D) keys (building the index once the cache grows past ``sparse_above``)."""
        self.keys = torch.cat([self.keys, keys])
        if self.index is not None:
            self.index.add(keys.float().contiguous())
        elif len(self.keys) > self.sparse_above:
            self.index = VectorIndex.build(self.keys.float().contiguous(), kind="auto")

    def affinity(self, x: torch.Tensor) -> Affinity:
        """(M, D) normalised queries -> affinities to every key (or to the top-k keys)."""
        if self.index is None:
            return Affinity(x @ self.keys.T)  # (M, N)
        scores, ids = self.index.search(x.float().contiguous(), self.top_k)  # (M, k)
        return Affinity(scores, ids)


@dataclass
class LabelValues:
    """Cache values ``diag(scale) L`` (one-hot rows, optionally scaled) kept as labels.

    Every cache here has one-hot values, possibly reweighted per key (APE, APE-T); as
    (N,) labels and (N,) scales they take O(N) memory instead of O(N * C), and the
    weighted sum over keys becomes a scatter-add (O(M * N)) instead of a matmul
    (O(M * N * C)).
    """

    labels: torch.Tensor  # (N,) int64
    num_classes: int
    scale: torch.Tensor | None = None  # (N,) or None for 1

    def __len__(self) -> int:
        return len(self.labels)

    def scaled(self, scale: torch.Tensor) -> "LabelValues":
        """The same labels with every row multiplied by ``scale`` (N,)."""
        return LabelValues(self.labels, self.num_classes, scale if self.scale is None else self.scale * scale)

    def dense(self) -> torch.Tensor:
        """(N, C) float32 values."""
        out = one_hot(self.labels, self.num_classes)
        return out if self.scale is None else out * self.scale[:, None]


def cache_weights(aff: Affinity, beta: float) -> torch.Tensor:
    """``exp(-beta * (1 - A))``: (M, N) dense or (M, k) for the top-k keys."""
    return torch.exp(-beta * aff.distance)


def combine(weights: torch.Tensor, values: torch.Tensor | LabelValues, ids: torch.Tensor | None = None) -> torch.Tensor:
    """Weighted sum of the keys' values ``weights @ V``, over all keys or the top-k: (M, C).

    ``LabelValues`` are summed with a scatter-add by label. Dense (N, C) values use a
    matmul, or in the sparse case a CSR (M, N) matrix with k entries per row (never
    materialising (M, k, C)). Ids of -1 (FAISS: fewer than k hits) weigh 0.
    """
    if isinstance(values, LabelValues):
        return _combine_labels(weights, values, ids)
    if ids is None:
        return weights @ values  # (M, N) @ (N, C)
    m, k = weights.shape
    if m == 0 or k == 0:
        return torch.zeros(m, values.shape[1], dtype=values.dtype)
    found = ids >= 0
    rows = torch.arange(0, m * k + 1, k)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        csr = torch.sparse_csr_tensor(rows, torch.where(found, ids, 0).reshape(-1),
                                      torch.where(found, weights, 0).reshape(-1), size=(m, len(values)))
        return csr @ values  # (M, C)


def _combine_labels(weights: torch.Tensor, values: LabelValues, ids: torch.Tensor | None) -> torch.Tensor:
    out = torch.zeros(weights.shape[0], values.num_classes, dtype=weights.dtype)  # (M, C)
    if ids is None:
        w = weights if values.scale is None else weights * values.scale  # (M, N)
        return out.index_add_(1, values.labels, w)
    found = ids >= 0
    ids = torch.where(found, ids, 0)  # (M, k)
    w = torch.where(found, weights, 0)
    if values.scale is not None:
        w = w * values.scale[ids]
    return out.scatter_add_(1, values.labels[ids], w)


def cache_logits(aff: Affinity, beta: float, values: torch.Tensor | LabelValues) -> torch.Tensor:
    """``exp(-beta * (1 - A)) @ V``, dense or summed over the top-k keys: (M, C)."""
    return combine(cache_weights(aff, beta), values, aff.ids)


def owned(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Fresh, aligned copies of loaded tensors.

    safetensors hands back tensors at arbitrary byte offsets; BLAS picks different
    kernels for unaligned memory, so without the copy a loaded model's logits could
    differ from the fitted model's in the last bits.
    """
    return {k: v.clone() for k, v in state.items()}


def check_text_weights(text_weights: torch.Tensor, dim: int) -> torch.Tensor:
    """Normalised (C, D) text weights; a width mismatch is a ShapeError."""
    if text_weights.shape[1] != dim:
        raise ShapeError(f"text weights are {text_weights.shape[1]}-d but features are {dim}-d")
    return F.normalize(text_weights, dim=-1)


def check_search_options(config: Any, order: str) -> None:
    """Validate a three-hyper-parameter cache config: ``alpha``/``beta``/``gamma`` are >= 0 or None
    (searched), ``search_scale``/``search_steps`` are triples in ``order`` (e.g. "beta, alpha, gamma")
    with steps > 0, ``logit_scale`` > 0 or None (the task's) and ``top_k`` >= 1."""
    for name in ("alpha", "beta", "gamma"):
        value = getattr(config, name)
        config.check(value is None or value >= 0, f"{name} must be >= 0 or None (search), got {value}")
    config.check(len(config.search_scale) == 3 and len(config.search_steps) == 3 and min(config.search_steps) > 0,
                 f"search_scale and search_steps are ({order}) triples with steps > 0")
    check_logit_scale(config)
    config.check(config.top_k >= 1, f"top_k must be >= 1, got {config.top_k}")


def unsearched_choice(config: Any, val: tuple | None) -> dict[str, Any] | None:
    """The fit info of a three-hyper-parameter cache when nothing is searched (all of alpha, beta,
    gamma fixed, or no validation split): each fixed value, else its ``init_`` value; None when the
    search on validation runs."""
    fixed = (config.alpha, config.beta, config.gamma)
    if val is not None and any(v is None for v in fixed):
        return None
    inits = (config.init_alpha, config.init_beta, config.init_gamma)
    alpha, beta, gamma = (v if v is not None else i for v, i in zip(fixed, inits))
    return {"alpha": alpha, "beta": beta, "gamma": gamma, "searched": False}
