"""Tip-Adapter: a training-free key-value cache over the few-shot features.

Zhang et al., "Tip-Adapter: Training-free Adaption of CLIP for Few-shot
Classification", ECCV 2022 (arXiv:2207.09519), Sec. 3.2: the cache affinity and the
logits equation (the paper's numbered equations of Sec. 3.2; written out here because
the numbering could not be checked offline)::

    A      = exp(-beta * (1 - f @ F_train.T))            # affinity,   (M, N)
    logits = s * f @ W.T + alpha * A @ L_train            # the logits, (M, C)

f and the keys F_train are L2-normalised, W the normalised zero-shot text weights,
L_train the one-hot labels. Keys are the mean of the augmented views of each image.
alpha (residual ratio) and beta (sharpness) are searched on validation over the
authors' grids (beta: 200 steps, alpha: 20 steps) unless given.

s is the backbone's CLIP logit scale ``exp(logit_scale)`` (``task.logit_scale``). The
paper's equation has no constant (``f W^T``); the authors' code writes ``100.``, which
is OpenAI CLIP's learned scale, so for OpenAI models the two agree; other models (an
open_clip model, vlkit-mini v2's 35.39) get their own. An explicit ``logit_scale`` overrides.
The scale used is saved with the method. Departures from the authors' code: the tie rule
of the search (:mod:`vlkit.caches.search`) and validation-only selection (docs/fidelity.md).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlkit.caches.common import (Affinity, KeyStore, LabelValues, cache_keys, cache_logits, check_text_weights,
                                linear_grid, normalized_val, owned, zero_shot_logits)
from vlkit.methods.logit_scale import check_logit_scale, logit_scale_state, resolve_logit_scale, restored_logit_scale
from vlkit.caches.search import search_tip
from vlkit.errors import ShapeError
from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task, as_tensor


@dataclass
class TipAdapterConfig(MethodConfig):
    """``alpha``/``beta`` fixed, or None to search them on validation.

    ``search_scale``/``search_steps`` are (beta, alpha): grids ``0.1 + i * (scale - 0.1) / steps``
    (the authors' EuroSAT config by default; their DTD config is (13, 13)). Without
    validation data ``init_alpha``/``init_beta`` are used. ``logit_scale``: the zero-shot
    logits' scale, None for the task's (the backbone's). Caches above ``sparse_above`` entries
    use top-``top_k`` affinities from the FAISS index.
    """

    alpha: float | None = None
    beta: float | None = None
    init_alpha: float = 2.0
    init_beta: float = 1.0
    search_scale: tuple[float, float] = (12.0, 10.0)
    search_steps: tuple[int, int] = (200, 20)
    logit_scale: float | None = None
    sparse_above: int = 100_000
    top_k: int = 256

    def validate(self) -> None:
        for name in ("alpha", "beta"):
            value = getattr(self, name)
            self.check(value is None or value >= 0, f"{name} must be >= 0 or None (search), got {value}")
        self.check(self.init_alpha >= 0 and self.init_beta >= 0, "init_alpha and init_beta must be >= 0")
        self.check(len(self.search_scale) == 2 and len(self.search_steps) == 2,
                   "search_scale and search_steps are (beta, alpha) pairs")
        self.check(all(s > 0 for s in self.search_steps), f"search_steps must be > 0, got {self.search_steps}")
        check_logit_scale(self)
        self.check(self.top_k >= 1 and self.sparse_above >= 0, "top_k must be >= 1 and sparse_above >= 0")


def search_alpha_beta(cfg: TipAdapterConfig, x: torch.Tensor, aff: Affinity, y: torch.Tensor,
                      text_weights: torch.Tensor, values: LabelValues, logit_scale: float,
                      fixed: tuple[float | None, float | None] = (None, None)) -> dict:
    """Tip-Adapter's (beta, alpha) grid search on queries x (M, D) with labels y (M,) for a cache
    (affinities ``aff`` to its keys, ``values``) and text weights (C, D); a value in ``fixed``
    (beta, alpha) replaces its grid. Returns :func:`vlkit.caches.search.search_tip`'s result."""
    beta, alpha = fixed
    betas = [beta] if beta is not None else linear_grid(cfg.search_scale[0], cfg.search_steps[0], 0.1)
    alphas = [alpha] if alpha is not None else linear_grid(cfg.search_scale[1], cfg.search_steps[1], 0.1)
    clip = zero_shot_logits(x, text_weights, logit_scale)  # (M, C)
    return search_tip(clip, aff, values, y, betas, alphas)


@register_method
class TipAdapter(Method):
    """Training-free cache model; sklearn style: ``TipAdapter(alpha=1, beta=5).fit(keys, labels, W)``,
    or ``GridSearchCV(TipAdapter(beta=5, text_weights=W), {"alpha": [...]}).fit(keys, labels)``.

    Learned attributes: ``keys_`` (N, D), ``labels_`` (N,) (``values_`` is their (N, C)
    one-hot), ``text_weights_`` (C, D), ``alpha_``, ``beta_``, ``logit_scale_`` (the scale used).
    ``add(features, labels)`` grows the cache in place (the zero-to-few-shot upgrade) with no refitting.
    """

    name = "tip-adapter"
    family = "cache"
    paper = "Zhang et al., Tip-Adapter, ECCV 2022 (arXiv:2207.09519), Sec. 3.2 (affinity and logits equations)"
    Config = TipAdapterConfig

    # ---- fitting -----------------------------------------------------------------------
    def _build_cache(self, task: Task) -> None:
        self.logit_scale_ = resolve_logit_scale(self.config.logit_scale, task)
        self.text_weights_ = check_text_weights(task.text_weights, task.dim)  # (C, D)
        self.keys_ = cache_keys(task.train_features, task.train_norms)  # (N, D), raw views averaged
        self.labels_ = task.train_labels.clone()  # (N,)
        self._values = LabelValues(self.labels_, task.num_classes)
        self._store = KeyStore(self.keys_, self.config.sparse_above, self.config.top_k)

    @property
    def values_(self) -> torch.Tensor:
        """(N, C) cache values (one-hot labels, scaled per key where a method reweights them)."""
        return self._values.dense()

    def _fit(self, task: Task) -> None:
        self._build_cache(task)
        self._choose_hyperparameters(task)

    def _choose_hyperparameters(self, task: Task) -> None:
        cfg = self.config
        val = normalized_val(task)
        if (cfg.alpha is not None and cfg.beta is not None) or val is None:
            self.alpha_ = cfg.alpha if cfg.alpha is not None else cfg.init_alpha
            self.beta_ = cfg.beta if cfg.beta is not None else cfg.init_beta
            self.fit_info_ = {"alpha": self.alpha_, "beta": self.beta_, "searched": False}
            return
        x, y = val
        found = self._grid_search(x, self._store.affinity(x), y, fixed=(cfg.beta, cfg.alpha))
        self.fit_info_ = {**found, "searched": True}

    def _grid_search(self, x: torch.Tensor, aff: Affinity, y: torch.Tensor,
                     fixed: tuple[float | None, float | None] = (None, None)) -> dict:
        """Tip-Adapter's (beta, alpha) grid on queries x (M, D) with labels y (M,); a value in
        ``fixed`` (beta, alpha) replaces its grid. Sets ``alpha_``/``beta_``; returns the search."""
        found = search_alpha_beta(self.config, x, aff, y, self.text_weights_, self._values, self.logit_scale_, fixed)
        self.alpha_, self.beta_ = found["alpha"], found["beta"]
        return found

    def retune(self, max_entries: int = 20_000) -> dict:
        """Re-choose alpha/beta by leave-one-out on the cached examples themselves.

        For caches grown without a validation split (the upgrade run): each cached key
        is classified by the zero-shot logits plus the cache without its own entry, and
        the usual grid search picks alpha/beta on those predictions. Keys and labels are
        unchanged. Skipped (returns {}) for caches over ``max_entries`` (O(N^2) work).
        """
        self._check_fitted()
        if not 1 < self.cache_size <= max_entries:
            return {}
        x = F.normalize(self.keys_, dim=-1)  # (N, D) the cached examples as queries
        scores = x @ self.keys_.T  # (N, N)
        scores.fill_diagonal_(-1e4)  # exp(-beta * (1 + 1e4)) = 0: each example leaves itself out
        found = self._grid_search(x, Affinity(scores), self.labels_)  # the full grid, whatever was fixed
        self.fit_info_ = {**found, "searched": "leave-one-out"}
        return found

    # ---- inference ----------------------------------------------------------------------
    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        clip = zero_shot_logits(x, self.text_weights_, self.logit_scale_)  # (M, C)
        return clip + self.alpha_ * cache_logits(self._store.affinity(x), self.beta_, self._values)

    # ---- the upgrade ----------------------------------------------------------------------
    def add(self, features: Any, labels: Any) -> "TipAdapter":
        """Append labelled examples to the cache: (n, D) or (n, V, D) features, (n,) class indices."""
        self._check_fitted()
        feats = as_tensor(features, "features", (2, 3))
        feats = feats[:, None] if feats.ndim == 2 else feats
        labels = torch.as_tensor(labels).long().reshape(-1)
        if feats.shape[-1] != self.dim_:
            raise ShapeError(f"{self.name} holds {self.dim_}-d keys, got {feats.shape[-1]}-d features: "
                             "features from another backbone? encode them with the run's model")
        if labels.shape != (feats.shape[0],):
            raise ShapeError(f"labels must be ({feats.shape[0]},), got {tuple(labels.shape)}")
        c = len(self.classnames_)
        if len(labels) and (labels.min() < 0 or labels.max() >= c):
            raise ShapeError(f"labels must be class indices in 0..{c - 1}")
        new_keys = cache_keys(feats)  # (n, D)
        self.keys_ = torch.cat([self.keys_, new_keys])
        scale = self._values.scale
        if scale is not None:  # a reweighted cache (APE-T) gives new keys weight 1
            scale = torch.cat([scale, torch.ones(len(labels))])
        self.labels_ = torch.cat([self.labels_, labels])
        self._values = LabelValues(self.labels_, c, scale)
        self._store.add(new_keys)
        return self

    # ---- persistence -----------------------------------------------------------------------
    def state(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys_, "labels": self.labels_, "text_weights": self.text_weights_,
                "alpha": torch.tensor(self.alpha_, dtype=torch.float64),
                "beta": torch.tensor(self.beta_, dtype=torch.float64), "logit_scale": logit_scale_state(self.logit_scale_)}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        state = owned(state)
        self.keys_, self.labels_, self.text_weights_ = state["keys"], state["labels"], state["text_weights"]
        self._values = LabelValues(self.labels_, len(self.text_weights_))
        self.alpha_, self.beta_ = float(state["alpha"]), float(state["beta"])
        self.logit_scale_ = restored_logit_scale(state, self.config.logit_scale)
        self._store = KeyStore(self.keys_, self.config.sparse_above, self.config.top_k)

    @property
    def cache_size(self) -> int:
        """N, the number of cached examples."""
        return len(self.keys_) if hasattr(self, "keys_") else 0
