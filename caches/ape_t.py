"""APE-T: APE with a trainable category residual.

Zhu et al., ICCV 2023 (arXiv:2304.01195), Sec. 3.4 (APE-T). On the Q refined channels
(criterion weights (w_s, w_v) = (0.2, 0.8)) a residual R (C, Q), initialised to zero,
is added to every cache key of class c and to the text weight of class c; per-key
value weights r (N,), initialised to one, replace the KL reweighting (as in the
authors' code, ``APE_Training``)::

    F_n[:, Q] += R[y_n]        W_c[:, Q] += R[c]        V = diag(r) L
    logits = s f W^T + alpha * exp(-beta (1 - f F^T)) V

s is the backbone's logit scale (the authors' code writes OpenAI CLIP's ``100.``; see
:mod:`vlkit.caches.tip_adapter`). Trained with cross-entropy (the authors'
``SmoothCrossEntropy`` at its default smoothing 0, i.e. plain cross-entropy) at the initial
alpha/beta, AdamW (lr 1e-3, eps 1e-3, weight decay 0.1), batch 256, 20 epochs, the cosine
over epochs x batches stepped per batch as the authors' ``CosineAnnealingLR``, on the
cached augmented views. Epoch and alpha/beta are chosen together as Tip-Adapter-F's
(:mod:`vlkit.caches.tip_adapter_f`): each epoch (and the untrained state) is scored by
the best validation accuracy of an alpha/beta search with its residual. The authors'
code picks the epoch on validation at the initial alpha/beta and then searches; the
joint choice is ours (issue 21), as are the tie rule and the cached views.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from vlkit.caches.ape import channel_criterion, check_channels, select_channels
from vlkit.caches.common import Affinity, KeyStore, LabelValues, owned
from vlkit.caches.tip_adapter import TipAdapter, search_alpha_beta
from vlkit.caches.tip_adapter_f import TipAdapterFConfig, chosen_search, epoch_info, train_cache_parameters
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


@dataclass
class APETConfig(TipAdapterFConfig):
    """Tip-style (beta, alpha) search plus APE-T's channels and training schedule (validated as Tip-Adapter-F's)."""

    init_alpha: float = 2.0
    init_beta: float = 1.0
    search_scale: tuple[float, float] = (7.0, 7.0)
    channels: int | float = 0.75
    channel_weights: tuple[float, float] = (0.2, 0.8)
    epochs: int = 20
    lr: float = 1e-3
    eps: float = 1e-3
    weight_decay: float = 0.1
    batch_size: int = 256

    def validate(self) -> None:
        super().validate()
        check_channels(self)


@register_method
class APET(TipAdapter):
    """APE-T: trains C * Q residuals plus N value weights; inference is a Tip-style cache."""

    name = "ape-t"
    family = "cache"
    paper = "Zhu et al., Not All Features Matter (APE-T), ICCV 2023 (arXiv:2304.01195), Sec. 3.4"
    Config = APETConfig

    def _fit(self, task: Task) -> None:
        cfg = self.config
        self._build_cache(task)  # keys_ (N, D), values_ (N, C), text_weights_ (C, D)
        crit = channel_criterion(self.text_weights_, self.keys_, task.train_labels, *cfg.channel_weights)
        self.channels_ = select_channels(crit, cfg.channels)  # (Q,)
        self.residual_ = torch.zeros(task.num_classes, len(self.channels_))  # (C, Q)
        self.value_weights_ = torch.ones(len(self.keys_))  # (N,)
        history = self._train(task) if len(self.keys_) else {}
        choice = chosen_search(history)
        if choice is None:  # no validation (or an empty cache): fixed/initial alpha/beta, or the plain search
            self._choose_hyperparameters(task)
            self.fit_info_["best_epoch"] = history.get("best_epoch")
        else:
            self.alpha_, self.beta_ = choice["alpha"], choice["beta"]
            self.fit_info_ = {**choice, "searched": True, **epoch_info(history)}
        self.fit_info_["channels"] = len(self.channels_)

    def _effective(self, residual: torch.Tensor, weights: torch.Tensor, keys: torch.Tensor,
                   text: torch.Tensor, values: torch.Tensor, labels: torch.Tensor):
        """Keys (N, D), text weights (C, D) and values (N, C) with the residual applied."""
        new_keys = keys.index_add(1, self.channels_, residual[labels])
        new_text = text.index_add(1, self.channels_, residual)
        return new_keys, new_text, values * weights[:, None]

    def _train(self, task: Task) -> dict:
        cfg = self.config
        residual, weights = nn.Parameter(self.residual_.clone()), nn.Parameter(self.value_weights_.clone())
        keys, text, values, labels = self.keys_, self.text_weights_, self.values_, task.train_labels
        scale = self.logit_scale_

        def forward(x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C)
            k, w, v = self._effective(residual, weights, keys, text, values, labels)
            return scale * x @ w.T + cfg.init_alpha * torch.exp(-cfg.init_beta * (1 - x @ k.T)) @ v

        def search(x: torch.Tensor, y: torch.Tensor) -> dict:  # alpha/beta for the current residual and weights
            r, w = residual.detach(), weights.detach()
            k, t, _ = self._effective(r, w, keys, text, values, labels)
            return search_alpha_beta(cfg, x, Affinity(x @ k.T), y, t, LabelValues(labels, task.num_classes, w.clone()),
                                     scale, (cfg.beta, cfg.alpha))

        history = train_cache_parameters([residual, weights], forward, search, task, cfg, self.name)
        self.residual_, self.value_weights_ = residual.detach().clone(), weights.detach().clone()
        self.keys_, self.text_weights_, _ = self._effective(self.residual_, self.value_weights_, keys, text,
                                                            values, labels)
        self._values = LabelValues(self.labels_, task.num_classes, self.value_weights_)  # diag(r) L
        self._store = KeyStore(self.keys_, cfg.sparse_above, cfg.top_k)
        return history

    @property
    def trainable_parameters(self) -> int:
        if not hasattr(self, "residual_"):
            return 0
        return int(self.residual_.numel() + self.value_weights_.numel())

    def state(self) -> dict[str, torch.Tensor]:
        return {**super().state(), "residual": self.residual_, "value_weights": self.value_weights_,
                "channels": self.channels_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        state = owned(state)
        super().restore(state, meta, backbone)
        self.residual_, self.value_weights_ = state["residual"], state["value_weights"]
        self.channels_ = state["channels"]
        self._values = LabelValues(self.labels_, len(self.text_weights_), self.value_weights_)
