"""Tip-Adapter-F: Tip-Adapter with the cache keys fine-tuned.

Zhang et al., ECCV 2022 (arXiv:2207.09519), Sec. 3.3: the keys F_train become a
trainable (N, D) matrix initialised from the cache, trained with cross-entropy on the
Sec. 3.2 logits at the initial alpha/beta (2, 1): AdamW (lr 1e-3, eps 1e-4, torch's
default weight decay 0.01), batch 256, 20 epochs, and a cosine schedule over
epochs x batches stepped after every batch (the authors' ``CosineAnnealingLR(optimizer,
epochs * len(loader))``). The zero-shot term uses the backbone's logit scale
(:mod:`vlkit.caches.tip_adapter`).

Epoch and alpha/beta are chosen together on validation: after each epoch, alpha/beta are
searched on validation with that epoch's keys (Tip-Adapter's grid search), the epoch
scores the best validation accuracy of its search, and the best epoch keeps its keys and
its alpha/beta. The keys before training (Tip-Adapter itself) are a candidate too
(``keep_initial``), so fine-tuning never returns something worse on validation than
Tip-Adapter. Departures from the authors' code, each for a reason (docs/fidelity.md):
the reference picks the epoch on the *test* set at the initial alpha/beta and then
searches alpha/beta on validation (vlkit never reads the test set, and at fixed
alpha/beta the validation accuracy barely moves between epochs, issue 21); training
reads the cached augmented views (one random view per image per epoch) instead of
re-encoding fresh crops; ties in the search break toward the grid's centre.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.caches.common import Affinity, KeyStore, normalized_val
from vlkit.caches.tip_adapter import TipAdapter, TipAdapterConfig, search_alpha_beta
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train

Search = Callable[[torch.Tensor, torch.Tensor], dict]  # (val queries (M, D), labels (M,)) -> search result


@dataclass
class TipAdapterFConfig(TipAdapterConfig):
    """Tip-Adapter's options plus the fine-tuning schedule (the authors' defaults).

    ``keep_initial``: the untrained keys (Tip-Adapter) are an epoch-selection candidate.
    """

    epochs: int = 20
    lr: float = 1e-3
    eps: float = 1e-4
    weight_decay: float = 0.01  # torch AdamW's default, which the reference code leaves in place
    batch_size: int = 256
    keep_initial: bool = True

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
        if not len(self.keys_):
            self._choose_hyperparameters(task)
            return
        cfg = self.config
        keys = nn.Parameter(self.keys_.clone())  # (N, D)
        text, values, scale = self.text_weights_, self.values_, self.logit_scale_
        alpha, beta = cfg.init_alpha, cfg.init_beta

        def forward(x: torch.Tensor) -> torch.Tensor:  # (B, D) -> (B, C): Tip-Adapter logits, trainable keys
            return scale * x @ text.T + alpha * torch.exp(-beta * (1 - x @ keys.T)) @ values

        def search(x: torch.Tensor, y: torch.Tensor) -> dict:  # alpha/beta for the current keys
            return search_alpha_beta(cfg, x, Affinity(x @ keys.detach().T), y, text, self._values, scale,
                                     (cfg.beta, cfg.alpha))

        history = train_cache_parameters([keys], forward, search, task, cfg, self.name)
        self.keys_ = keys.detach().clone()
        self._store = KeyStore(self.keys_, cfg.sparse_above, cfg.top_k)
        self._adopt(history, task)

    def _adopt(self, history: dict, task: Task) -> None:
        """alpha/beta and fit info from the chosen epoch's search (the fixed or initial values without validation)."""
        choice = chosen_search(history)
        if choice is None:
            self._choose_hyperparameters(task)  # no validation: the fixed or initial alpha/beta
            self.fit_info_["best_epoch"] = history["best_epoch"]
            return
        self.alpha_, self.beta_ = choice["alpha"], choice["beta"]
        self.fit_info_ = {**choice, "searched": True, **epoch_info(history)}

    @property
    def trainable_parameters(self) -> int:
        return int(self.keys_.numel()) if hasattr(self, "keys_") else 0


def chosen_search(history: dict) -> dict | None:
    """The search result of the chosen epoch (epoch -1: the initial state), or None without validation."""
    searches = history.get("searches")
    if not searches:
        return None
    return searches[history["best_epoch"] + (1 if "initial_val" in history else 0)]


def epoch_info(history: dict) -> dict[str, Any]:
    """Per-epoch selection record: ``best_epoch`` (-1: the untrained cache), ``val_per_epoch``
    (best validation top-1 % of each epoch's alpha/beta search), ``alpha_per_epoch``,
    ``beta_per_epoch``, and the untrained cache's ``initial_val``/``initial_alpha``/``initial_beta``."""
    searches = history["searches"]
    initial = searches[0] if "initial_val" in history else None
    trained = searches[1:] if initial is not None else searches
    info: dict[str, Any] = {"best_epoch": history["best_epoch"],
                            "val_per_epoch": [s["val_accuracy"] for s in trained],
                            "alpha_per_epoch": [s["alpha"] for s in trained],
                            "beta_per_epoch": [s["beta"] for s in trained]}
    if initial is not None:
        info.update(initial_val=initial["val_accuracy"], initial_alpha=initial["alpha"], initial_beta=initial["beta"])
    return info


def train_cache_parameters(params: list[nn.Parameter], forward: Callable[[torch.Tensor], torch.Tensor],
                           search: Search, task: Task, cfg: TipAdapterFConfig, description: str) -> dict[str, Any]:
    """The loop Tip-Adapter-F and APE-T share: cross-entropy of ``forward`` ((B, D) -> (B, C)) on
    the cached views (normalised), AdamW with the cosine stepped per batch over epochs x batches.

    Selection: after each epoch (and before the first with ``keep_initial``), ``search`` runs on
    the validation split; the epoch's score is its best validation accuracy and the best epoch's
    parameters are restored. The history's ``searches`` holds every search result in order
    (the initial one first when kept).
    """
    feats = F.normalize(task.train_features, dim=-1)  # (N, V, D)
    generator = torch.Generator().manual_seed(task.seed)
    val = normalized_val(task)
    searches: list[dict] = []

    def val_score() -> float:
        with torch.no_grad():
            found = search(*val)
        searches.append(found)
        return found["val_accuracy"]

    schedule = TrainConfig(epochs=cfg.epochs, lr=cfg.lr, optimizer="adamw", eps=cfg.eps,
                           weight_decay=cfg.weight_decay, batch_size=cfg.batch_size, schedule="cosine",
                           step="batch", keep_initial=cfg.keep_initial)
    history = train(params, lambda b: F.cross_entropy(forward(b[0]), b[1]),
                    lambda epoch: feature_batches(feats, task.train_labels, cfg.batch_size, generator),
                    schedule, val_score if val is not None else None, description=description)
    history["searches"] = searches
    return history
