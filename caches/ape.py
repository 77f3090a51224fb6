"""APE: training-free adaptive prior refinement of the cache.

Zhu et al., "Not All Features Matter: Enhancing Few-shot CLIP with Adaptive Prior
Refinement", ICCV 2023 (arXiv:2304.01195). Sec. 3.2 (prior refinement) picks the Q
feature channels that best separate the classes; Sec. 3.3 (APE) combines three
affinities. Written out (the numbered equations of Sec. 3.2-3.3; exact forms, e.g. the
log2 and the 1e-6 smoothing, follow the authors' code)::

    S_k = 1 / P * sum_{i != j} sum_{m, n} x_{i,m,k} x_{j,n,k}   # inter-class similarity,
          x_{i,.} = class i's text weight and its cache keys, P = number of pairs
    V_k = Var_i(W_{i,k})                                        # variance of text weights
    J_k = -w_s * S_k + w_v * V_k      (w_s, w_v) = (0.7, 0.3)   # keep the top-Q channels
    f', F', W' = the Q channels of f, keys, W, each renormalised
    R_F'W' = exp(gamma * KL(L || softmax(F' W'^T)))              # per-key reweighting (log2)
    logits = s f W^T + alpha * exp(-beta (1 - f' F'^T)) diag(R_F'W') L

s is the backbone's logit scale (the authors' code writes OpenAI CLIP's ``100.``); the
softmax inside R_F'W' stays unscaled, as in the authors' code.

S is computed from per-class sums: sum_{i != j} s_i s_j = (sum_i s_i)^2 - sum_i s_i^2,
not with the reference code's quadruple loop (equal to float rounding).

Defaults are the authors' ImageNet configuration (yangyangyang127/APE,
``configs/imagenet.yaml``, run by ``APE`` in ``main.py``): Q = 500 of RN50's 1024 channels
(``channels=500/1024``, a fraction of D), (w_s, w_v) = (0.7, 0.3), search scales
(beta, alpha, gamma) = (7, 7, 0.5) with (200, 20, 5) steps, initial (beta, alpha, gamma)
= (1, 2, 0.1). Keys are the mean of the raw augmented passes, then normalised (the
authors' ``extract_features.py``). Departures, one line each:

- the search runs on vlkit's validation split (the authors use each benchmark's val split, ImageNet's test set);
- the augmented passes are the store's cached views (10 by default, the authors' ``augment_epoch``);
- text weights are the task's templates, not the authors' CuPL + template ensemble (an input, not the method).

Other datasets' configurations differ (e.g. DTD: Q = 400, weights (0.5, 0.5), gamma
scale 1 with 20 steps); pass them as options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlkit.caches.common import (Affinity, KeyStore, LabelValues, cache_keys, cache_logits, check_search_options,
                                check_text_weights, linear_grid, normalized_val, owned, unsearched_choice,
                                zero_shot_logits)
from vlkit.methods.logit_scale import logit_scale_state, resolve_logit_scale, restored_logit_scale
from vlkit.caches.search import search_ape
from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


def channel_criterion(text: torch.Tensor, keys: torch.Tensor, labels: torch.Tensor,
                      w_sim: float, w_var: float) -> torch.Tensor:
    """J (D,): ``-w_sim * S + w_var * V`` from per-class sums (text (C, D), keys (N, D), labels (N,))."""
    c = text.shape[0]
    sums = text.double().index_add(0, labels, keys.double())  # (C, D): text + keys of each class
    counts = 1 + torch.bincount(labels, minlength=c).double()  # (C,)
    cross = sums.sum(0) ** 2 - (sums ** 2).sum(0)  # (D,) sum over class pairs i != j of s_i * s_j
    pairs = counts.sum() ** 2 - (counts ** 2).sum()  # number of (i, m), (j, n) pairs with i != j
    sim = cross / pairs if pairs > 0 else torch.zeros_like(cross)
    var = text.double().var(dim=0, unbiased=c > 1)  # (D,)
    return (-w_sim * sim + w_var * var).float()


def select_channels(criterion: torch.Tensor, channels: int | float) -> torch.Tensor:
    """Indices (Q,) of the top-Q channels, in ascending order; float ``channels`` is a fraction of D."""
    d = criterion.numel()
    q = int(round(channels * d)) if isinstance(channels, float) else int(channels)
    q = max(1, min(d, q))
    return torch.topk(criterion, q).indices.sort().values


def check_channels(config: MethodConfig) -> None:
    """Validate ``config.channels``: a count >= 1 (int) or a fraction of D in (0, 1] (float)."""
    q = config.channels
    config.check(isinstance(q, (int, float)) and q > 0 and (isinstance(q, int) or q <= 1),
                 f"channels must be a count >= 1 (int) or a fraction in (0, 1] (float), got {q!r}")


def kl_reweighting(keys_r: torch.Tensor, text_r: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """(N,) ``KL(L || softmax(F' W'^T))`` in bits, with the authors' 1e-6 smoothing."""
    probs = (keys_r @ text_r.T).softmax(dim=-1)  # (N, C)
    return (values * torch.log2((values + 1e-6) / (probs + 1e-6))).sum(dim=-1)


@dataclass
class APEConfig(MethodConfig):
    """``alpha``/``beta``/``gamma`` fixed or None (searched on validation); defaults: the authors' ImageNet config.

    ``channels``: Q as a count (int) or a fraction of D (float; default 500/1024, the
    authors' 500 of RN50's 1024). ``channel_weights``: (w_s, w_v). Grids are (beta,
    alpha, gamma): beta/alpha ``0.1 + i * (scale - 0.1) / steps``, gamma
    ``i * scale / steps`` for i < steps, as the authors' search.
    """

    alpha: float | None = None
    beta: float | None = None
    gamma: float | None = None
    init_alpha: float = 2.0
    init_beta: float = 1.0
    init_gamma: float = 0.1
    channels: int | float = 500 / 1024
    channel_weights: tuple[float, float] = (0.7, 0.3)
    search_scale: tuple[float, float, float] = (7.0, 7.0, 0.5)
    search_steps: tuple[int, int, int] = (200, 20, 5)
    logit_scale: float | None = None  # None: the task's (the backbone's CLIP logit scale)
    sparse_above: int = 100_000
    top_k: int = 256

    def validate(self) -> None:
        check_search_options(self, "beta, alpha, gamma")
        check_channels(self)


@register_method
class APE(Method):
    """Training-free APE: refined-channel cache, KL-reweighted values, zero-shot residual."""

    name = "ape"
    family = "cache"
    paper = "Zhu et al., Not All Features Matter (APE), ICCV 2023 (arXiv:2304.01195), Sec. 3.2-3.3"
    Config = APEConfig

    def _fit(self, task: Task) -> None:
        cfg = self.config
        self.logit_scale_ = resolve_logit_scale(cfg.logit_scale, task)
        self.text_weights_ = check_text_weights(task.text_weights, task.dim)  # (C, D)
        keys = cache_keys(task.train_features, task.train_norms)  # (N, D)
        self.labels_ = task.train_labels.clone()  # (N,)
        self._values = LabelValues(self.labels_, task.num_classes)
        crit = channel_criterion(self.text_weights_, keys, task.train_labels, *cfg.channel_weights)
        self.channels_ = select_channels(crit, cfg.channels)  # (Q,)
        self._refine(keys)
        self._choose(task)

    def _refine(self, keys: torch.Tensor) -> None:
        self.keys_ = F.normalize(keys[:, self.channels_], dim=-1)  # (N, Q) F'
        text_r = F.normalize(self.text_weights_[:, self.channels_], dim=-1)  # (C, Q) W'
        self.kl_ = kl_reweighting(self.keys_, text_r, self._values.dense())  # (N,)
        self._store = KeyStore(self.keys_, self.config.sparse_above, self.config.top_k)

    @property
    def values_(self) -> torch.Tensor:
        """(N, C) one-hot cache values L (before the KL reweighting)."""
        return self._values.dense()

    def _affinity(self, x: torch.Tensor) -> Affinity:
        """Affinities of normalised (M, D) queries' refined channels f' to the refined keys F'."""
        return self._store.affinity(F.normalize(x[:, self.channels_], dim=-1))

    def _choose(self, task: Task) -> None:
        cfg = self.config
        val = normalized_val(task)
        if (info := unsearched_choice(cfg, val)) is not None:
            self.alpha_, self.beta_, self.gamma_, self.fit_info_ = info["alpha"], info["beta"], info["gamma"], info
            return
        x, y = val
        (sb, sa, sg), (nb, na, ng) = cfg.search_scale, cfg.search_steps
        betas = [cfg.beta] if cfg.beta is not None else linear_grid(sb, nb, 0.1)
        alphas = [cfg.alpha] if cfg.alpha is not None else linear_grid(sa, na, 0.1)
        gammas = [cfg.gamma] if cfg.gamma is not None else linear_grid(sg, ng, 0.0)
        clip = zero_shot_logits(x, self.text_weights_, self.logit_scale_)
        found = search_ape(clip, self._affinity(x), self._values, self.kl_, y, betas, alphas, gammas)
        self.alpha_, self.beta_, self.gamma_ = found["alpha"], found["beta"], found["gamma"]
        self.fit_info_ = {**found, "searched": True, "channels": len(self.channels_)}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x, dim=-1)
        clip = zero_shot_logits(x, self.text_weights_, self.logit_scale_)  # (M, C)
        values = self._values.scaled(torch.exp(self.gamma_ * self.kl_))  # diag(R_F'W') L
        return clip + self.alpha_ * cache_logits(self._affinity(x), self.beta_, values)

    def state(self) -> dict[str, torch.Tensor]:
        return {"keys": self.keys_, "labels": self.labels_, "text_weights": self.text_weights_,
                "channels": self.channels_, "kl": self.kl_,
                "hyper": torch.tensor([self.alpha_, self.beta_, self.gamma_], dtype=torch.float64),
                "logit_scale": logit_scale_state(self.logit_scale_)}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        state = owned(state)
        self.logit_scale_ = restored_logit_scale(state, self.config.logit_scale)
        self.keys_, self.labels_, self.text_weights_ = state["keys"], state["labels"], state["text_weights"]
        self._values = LabelValues(self.labels_, len(self.text_weights_))
        self.channels_, self.kl_ = state["channels"], state["kl"]
        self.alpha_, self.beta_, self.gamma_ = (float(v) for v in state["hyper"])
        self._store = KeyStore(self.keys_, self.config.sparse_above, self.config.top_k)
