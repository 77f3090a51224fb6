"""Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned.

Zhang et al., ECCV 2022 (arXiv:2207.09519), Sec. 3.3: the keys F_train become a
trainable (N, D) matrix initialised from the cache, trained with cross-entropy on the
Sec. 3.2 logits at the initial alpha/beta, AdamW (lr 1e-3, eps 1e-4), cosine
schedule, batch 256, 20 epochs. Training reads the cached augmented views (one random
view per image per epoch), never re-encoding images. The epoch is chosen on
validation and alpha/beta are then searched on validation (the reference code picks
both on the test set; we never do).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.caches.common import KeyStore, normalized_val
from vlkit.caches.tip_adapter import TipAdapter, TipAdapterConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter's options plus the fine-tuning schedule (the authors' defaults)."""

    epochs: int = 20
    lr: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 0.01  # torch AdamW's default, as in the reference code
    batch_size: int = 256

    def validate(self) -> None:
        super().validate()
        self.check(self.epochs >= 1 and self.batch_size >= 1 and self.lr > 0,
                   f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")


@register_method
class TipAdapterF(TipAdapter):
    """Tip-Adapter whose keys are fine-tuned for a few epochs (``trainable_parameters = N * D``)."""

    name = "tip-adapter-f"
    paper = "Zhang et al., Tip-Adapter, ECCV 2022 (arXiv:2207.09519), Sec. 3.3 (Tip-Adapter-F) with the Sec. 3.2 logits"
    Config = TipAdapterFConfig

    def _fit(self, task: Task) -> None:
        self._build_cache(task)
        if len(self.keys_):
            self._finetune(task)
        self._choose_hyperparameters(task)

    def _finetune(self, task: Task) -> None:
        cfg = self.config
        keys = nn.Parameter(self.keys_.clone())  # (N, D)
        text, values = self.text_weights_, self.values_
        alpha, beta = cfg.init_alpha, cfg.init_beta

        def forward(x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C): Tip-Adapter logits, trainable keys
            return cfg.logit_scale * x @ text.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ values

        history = train_cache_parameters([keys], forward, task, cfg, self.name)
        self.keys_ = keys.detach().clone()
        self._store = KeyStore(self.keys_, cfg.sparse_above, cfg.top_k)
        self._history = history

    def _choose_hyperparameters(self, task: Task) -> None:
        super()._choose_hyperparameters(task)
        history = getattr(self, "_history", None)
        if history is not None:
            self.fit_info_["best_epoch"] = history["best_epoch"]
            self.fit_info_["val_per_epoch"] = history["val"]

    @property
    def trainable_parameters(self) -> int:
        return int(self.keys_.numel()) if hasattr(self, "keys_") else 0


def train_cache_parameters(params: list[nn.Parameter], forward: Callable[[torch.Tensor], torch.Tensor],
                           task: Task, cfg: TipAdapterFConfig, description: str) -> list[dict[str, Any]]:
    """Cross-entropy on the cached views (normalised), AdamW with a cosine schedule, the epoch
    chosen on validation: the loop Tip-Adapter-F and APE-T share. ``forward``: (B, D) -> (B, C)."""
    feats = F.normalize(task.train_features, dim=-1)  # (N, V, D)
    generator = torch.Generator().manual_seed(task.seed)
    val = normalized_val(task)

    def val_score() -> float:
        with torch.no_grad():
            return float((forward(val[0]).argmax(-1) == val[1]).float().mean())

    schedule = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adamw", eps=cfg.eps,
                           weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, schedule="cosine")
    return train(params, lambda b: F.cross_entropy(forward(b[0]), b[1]),
                 lambda epoch: feature_batches(feats, task.train_labels, cfg.batch_size, generator),
                 schedule, val_score if val is not None else None, description=description)
