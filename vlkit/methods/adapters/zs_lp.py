"""ZS-LP and CLAP: linear probes initialised from the zero-shot classifier.

Silva-Rodriguez et al., "A Closer Look at the Few-Shot Adaptation of Large
Vision-Language Models", CVPR 2024. ZS-LP (Sec. 3): class prototypes ``W`` (C, D)
start at the zero-shot text weights ``T``; ``logits = tau * cos(f, w_c)`` with CLIP's
temperature ``tau`` (100); cross-entropy on augmented features. CLAP (Sec. 4) adds a
class-adaptive penalty ``mean_c lambda_c ||w_c - t_c||^2``, with ``lambda_c`` set from
the zero-shot model itself: the mean zero-shot softmax probability of class c on its
own support samples (the authors' "l2" setting). Training as the authors' config: SGD
lr 0.1, momentum 0.9, no weight decay, batch 256, 300 epochs, cosine schedule after
one constant warm-up epoch; every epoch passes over all cached augmented views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, train


def all_view_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                     generator: torch.Generator) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch over every augmented view (views 1..V-1; view 0 when V = 1), shuffled."""
    n, v, d = features.shape
    views = features[:, 1:] if v > 1 else features  # (N, V', D)
    x = views.reshape(-1, d)  # (N * V', D)
    y = labels.repeat_interleave(views.shape[1])
    order = torch.randperm(len(x), generator=generator)
    x, y = x[order], y[order]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(x), batch_size)]


@dataclass
class ZSLinearProbeConfig(MethodConfig):
    """``constraint``: "none" (ZS-LP) or "l2" (CLAP's class-adaptive penalty)."""

    constraint: str = "none"
    logit_scale: float = 100.0
    epochs: int = 300
    lr: float = 0.1
    batch_size: int = 256
    warmup_epochs: int = 1

    def validate(self) -> None:
        self.check(self.constraint in ("none", "l2"), f"constraint must be 'none' or 'l2', got {self.constraint!r}")
        self.check(self.logit_scale > 0 and self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1,
                   "logit_scale, epochs, lr and batch_size must be positive")


@register_method
class ZSLinearProbe(Method):
    """Linear probe on normalised features whose prototypes start at the zero-shot weights."""

    name = "zs-linear-probe"
    family = "adapter"
    paper = ("Silva-Rodriguez et al., A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models "
             "(CLAP), CVPR 2024, Sec. 3 (ZS-LP)")
    Config = ZSLinearProbeConfig

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): ``tau * cos(f, w_c)``."""
        return self.config.logit_scale * F.normalize(x, dim=-1) @ F.normalize(self.prototypes_, dim=-1).T

    def _multipliers(self, task: Task) -> torch.Tensor:
        """(C,) lambda_c: mean zero-shot probability of class c on its support views."""
        feats = task.train_features.reshape(-1, task.dim)  # (N * V, D)
        labels = task.train_labels.repeat_interleave(task.train_features.shape[1])
        probs = (self.config.logit_scale * F.normalize(feats, dim=-1) @ task.text_weights.T).softmax(-1)
        own = probs[torch.arange(len(labels)), labels]  # (N * V,)
        lam = torch.zeros(task.num_classes).index_add_(0, labels, own)
        counts = torch.bincount(labels, minlength=task.num_classes).clamp(min=1)
        return lam / counts

    def _fit(self, task: Task) -> None:
        c = self.config
        anchor = task.text_weights.clone()  # (C, D)
        self.prototypes_ = nn.Parameter(anchor.clone())
        lam = self._multipliers(task) if c.constraint == "l2" else None
        generator = torch.Generator().manual_seed(task.seed)
        cfg = TrainConfig(epochs=c.epochs, lr=c.lr, batch_size=c.batch_size, weight_decay=0.0,
                          warmup_epochs=c.warmup_epochs)

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            loss = F.cross_entropy(self._forward(batch[0]), batch[1])
            if lam is not None:
                loss = loss + (lam * (self.prototypes_ - anchor).pow(2).sum(-1)).mean()
            return loss

        def val_score() -> float:
            with torch.no_grad():
                return float((self._forward(task.val_features).argmax(-1) == task.val_labels).float().mean())

        history = train([self.prototypes_], loss_fn,
                        lambda _: all_view_batches(task.train_features, task.train_labels, c.batch_size, generator),
                        cfg, val_score if task.has_val else None, description=self.name)
        self.prototypes_ = self.prototypes_.detach()
        self.fit_info_ = {"best_epoch": history["best_epoch"], "best_val": history.get("best_val"),
                          "multipliers": None if lam is None else [round(float(v), 4) for v in lam]}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(x)

    @property
    def trainable_parameters(self) -> int:
        return int(self.prototypes_.numel()) if hasattr(self, "prototypes_") else 0

    def state(self) -> dict[str, torch.Tensor]:
        return {"prototypes": self.prototypes_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.prototypes_ = state["prototypes"]


@dataclass
class ClapConfig(ZSLinearProbeConfig):
    """CLAP: ZS-LP with the class-adaptive l2 penalty."""

    constraint: str = "l2"


@register_method
class Clap(ZSLinearProbe):
    """ZS-LP kept near the zero-shot prototypes, more so for classes zero-shot already gets right."""

    name = "clap"
    paper = ("Silva-Rodriguez et al., A Closer Look at the Few-Shot Adaptation of Large Vision-Language Models "
             "(CLAP), CVPR 2024, Sec. 4 (class-adaptive constraint)")
    Config = ClapConfig
