"""CLIP-Adapter (Gao et al., "CLIP-Adapter: Better Vision-Language Models with Feature
Adapters", IJCV 2023).

Eq. (2): a bottleneck ``A_v(f) = ReLU(ReLU(f W1) W2)`` (d -> d/4 -> d, no biases) on the
image feature (Eq. (3): the same form ``A_t`` for the optional text adapter); Eq. (4):
the residual blend ``f* = alpha A_v(f) + (1 - alpha) f`` with ``alpha = 0.2``; Eq. (5):
``W* = beta A_t(W) + (1 - beta) W``; then ``logits = s * cos(f*, W*)`` with ``s`` the
backbone's ``exp(logit_scale)`` (``task.logit_scale``). The model is the authors' code
(gaopengcuhk/CLIP-Adapter, ``clip_adapter.py``: visual adapter, ratio 0.2, both sides
normalised, the model's own logit scale). The authors' trainer runs under Dassl and
builds its optimiser with Dassl's SGD (momentum 0.9, weight decay 5e-4: Dassl's defaults,
which no config of theirs overrides); lr 1e-2, batch 32 and 200 epochs are those of the
reproduction vlkit cites (FereshteShakeri/FewShot-CLIP-Strong-Baseline,
``methods/clip_adapter.py``, which uses plain SGD); one warm-up epoch at 1e-5, then cosine
stepped per epoch (Dassl's schedule). One cached augmented view per image per epoch.

Departures (docs/fidelity.md, "CLIP-Adapter"):
- input features are the store's L2-normalised ones (the authors' adapter sees the raw
  feature; a bias-free ReLU bottleneck is positively homogeneous, so logits and gradients
  are the same);
- text weights are the task's template ensemble (the authors: one hand-written template per dataset);
- the text adapter (Eq. 3, 5) is in the paper, not in the public code; off by default;
- the reproduction steps its cosine every batch with ``T_max`` = epochs (a periodic
  schedule) and blends with ratio 0.5 without renormalising; vlkit follows the authors' model
  and Dassl's per-epoch cosine;
- the epoch is chosen on validation with the starting state as a candidate (the authors'
  Dassl run keeps the last epoch).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.logit_scale import check_logit_scale, logit_scale_state, resolve_logit_scale, restored_logit_scale
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train


def bottleneck(dim: int, reduction: int) -> nn.Sequential:
    """d -> d / reduction -> d, bias-free, ReLU after each layer (the authors' Adapter)."""
    hidden = max(1, dim // reduction)
    return nn.Sequential(nn.Linear(dim, hidden, bias=False), nn.ReLU(), nn.Linear(hidden, dim, bias=False), nn.ReLU())


@dataclass
class ClipAdapterConfig(MethodConfig):
    """``ratio`` is alpha (image), ``text_ratio`` beta (text adapter, off when None)."""

    reduction: int = 4
    ratio: float = 0.2
    text_ratio: float | None = None
    logit_scale: float | None = None  # None: the task's (the backbone's exp(logit_scale))
    epochs: int = 200
    lr: float = 1e-2
    batch_size: int = 32
    momentum: float = 0.9  # Dassl's SGD (the authors' trainer); the reproduction's plain SGD is momentum=0
    weight_decay: float = 5e-4
    warmup_epochs: int = 1

    def validate(self) -> None:
        self.check(self.reduction >= 1, f"reduction must be >= 1, got {self.reduction}")
        self.check(0 <= self.ratio <= 1, f"ratio must be in [0, 1], got {self.ratio}")
        self.check(self.text_ratio is None or 0 <= self.text_ratio <= 1, f"text_ratio must be in [0, 1] or None")
        check_logit_scale(self)
        self.check(self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1,
                   "epochs, lr and batch_size must be positive")
        self.check(self.momentum >= 0 and self.weight_decay >= 0, "momentum and weight_decay must be >= 0")


@register_method
class ClipAdapter(Method):
    """Residual bottleneck adapter on cached image features (and optionally on text weights)."""

    name = "clip-adapter"
    family = "adapter"
    paper = "Gao et al., CLIP-Adapter: Better Vision-Language Models with Feature Adapters, IJCV 2023, Eq. (2)-(5)"
    Config = ClipAdapterConfig

    def _build(self, dim: int) -> None:
        self.adapter_ = bottleneck(dim, self.config.reduction)
        self.text_adapter_ = bottleneck(dim, self.config.reduction) if self.config.text_ratio is not None else None

    def _parameters(self) -> list[nn.Parameter]:
        mods = [self.adapter_] + ([self.text_adapter_] if self.text_adapter_ is not None else [])
        return [p for m in mods for p in m.parameters()]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) features -> (N, C) logits."""
        a = self.config.ratio
        f = a * self.adapter_(x) + (1 - a) * x  # Eq. (4)
        w = self.text_weights_
        if self.text_adapter_ is not None:
            b = self.config.text_ratio
            w = b * self.text_adapter_(w) + (1 - b) * w  # Eq. (5)
        return self.logit_scale_ * F.normalize(f, dim=-1) @ F.normalize(w, dim=-1).T  # (N, C)

    def _fit(self, task: Task) -> None:
        c = self.config
        self.text_weights_ = task.text_weights.clone()  # (C, D)
        self.logit_scale_ = resolve_logit_scale(c.logit_scale, task)
        self._build(task.dim)
        generator = torch.Generator().manual_seed(task.seed)
        cfg = TrainConfig(epochs=c.epochs, lr=c.lr, batch_size=c.batch_size, momentum=c.momentum,
                          weight_decay=c.weight_decay, warmup_epochs=c.warmup_epochs, keep_initial=True)

        def val_score() -> float:
            with torch.no_grad():
                return float((self._forward(task.val_features).argmax(-1) == task.val_labels).float().mean())

        history = train(self._parameters(), lambda b: F.cross_entropy(self._forward(b[0]), b[1]),
                        lambda _: feature_batches(task.train_features, task.train_labels, c.batch_size, generator),
                        cfg, val_score if task.has_val else None, description="CLIP-Adapter")
        self.fit_info_ = {"best_epoch": history["best_epoch"], "best_val": history.get("best_val"),
                          "initial_val": history.get("initial_val"), "logit_scale": self.logit_scale_}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self._parameters()) if hasattr(self, "adapter_") else 0

    def state(self) -> dict[str, torch.Tensor]:
        out = {f"adapter.{k}": v for k, v in self.adapter_.state_dict().items()}
        if self.text_adapter_ is not None:
            out.update({f"text_adapter.{k}": v for k, v in self.text_adapter_.state_dict().items()})
        return {**out, "text_weights": self.text_weights_, "logit_scale": logit_scale_state(self.logit_scale_)}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.text_weights_ = state["text_weights"]
        self.logit_scale_ = restored_logit_scale(state, self.config.logit_scale)
        self._build(self.text_weights_.shape[1])
        self.adapter_.load_state_dict({k[8:]: v for k, v in state.items() if k.startswith("adapter.")})
        if self.text_adapter_ is not None:
            self.text_adapter_.load_state_dict({k[13:]: v for k, v in state.items() if k.startswith("text_adapter.")})
