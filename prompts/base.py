"""What every prompt learner shares: config, the training call, save/load, new classes.

A prompt learner owns one ``nn.Module`` (``net_``) holding only its learned tensors
(context vectors, meta-net, heads); the frozen text tower is reached through
:class:`~vlkit.prompts.encoder.PromptedTextEncoder`. Training goes through
``vlkit.methods.training.train`` (SGD, constant warm-up then cosine, epoch selection on the
validation split, the untrained prompts a candidate too). Image features come from the feature store: one cached augmented
view per image per epoch, so the image tower never runs while training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train


def coop_epochs(shots: int) -> int:
    """CoOp's schedule (Zhou et al., IJCV 2022, Sec. 4.1): 50 epochs at 1 shot, 100 at 2-4, 200 at 8-16."""
    return 50 if shots <= 1 else 100 if shots <= 4 else 200


@dataclass
class PromptConfig(MethodConfig):
    """Optimisation settings shared by the prompt learners (paper defaults per method).

    ``epochs`` None picks the paper's schedule for the number of shots (see
    ``default_epochs``); 0 skips training (the initial prompts, for identity checks).
    """

    # Quick schedule: prompt learners run the text tower every step; CoOp's 200 epochs at
    # 16 shots take ~1.5 minutes on 2 CPU cores with vlkit-mini's MiniLM text tower.
    quick = {"epochs": 5}

    epochs: int | None = None
    lr: float = 2e-3
    batch_size: int = 32
    warmup_epochs: int = 1
    warmup_lr: float = 1e-5
    weight_decay: float = 5e-4
    momentum: float = 0.9
    optimizer: str = "sgd"
    grad_clip: float | None = None
    select_on_val: bool = True
    augment: bool = True  # one cached augmented view per image per epoch
    # The state before training is a selection candidate (scored on validation first; kept
    # when no epoch beats it, fit_info_["best_epoch"] == -1): a learner that starts at the
    # hand-written prompt never returns something worse on validation than where it began.
    keep_initial: bool = True

    def validate(self) -> None:
        self.check(self.epochs is None or self.epochs >= 0, f"epochs must be >= 0 or None, got {self.epochs}")
        self.check(self.lr > 0 and self.batch_size >= 1, f"lr and batch_size must be positive, got {self.lr}, "
                                                         f"{self.batch_size}")
        self.check(self.optimizer in ("sgd", "adamw"), f"optimizer must be sgd or adamw, got {self.optimizer!r}")
        self.check(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")

    def default_epochs(self, shots: int) -> int:
        """The paper's epochs for ``shots`` (overridden per method)."""
        return 10

    def train_config(self, shots: int) -> TrainConfig:
        """The shared loop's settings; warm-up is capped below the epoch count."""
        epochs = self.epochs if self.epochs is not None else self.default_epochs(shots)
        return TrainConfig(
            epochs=epochs, lr=self.lr, optimizer=self.optimizer, momentum=self.momentum,
            weight_decay=self.weight_decay, batch_size=self.batch_size,
            warmup_epochs=min(self.warmup_epochs, max(epochs - 1, 0)), warmup_lr=self.warmup_lr,
            grad_clip=self.grad_clip, select_on_val=self.select_on_val, keep_initial=self.keep_initial,
        )


def shots_of(task: Task) -> int:
    """Images per class of the task's training set (the largest class)."""
    return int(torch.bincount(task.train_labels, minlength=task.num_classes).max()) if len(task.train_labels) else 0


class PromptMethod(Method):
    """Base of the prompt learners; subclasses implement ``build`` and ``train_logits``.

    ``build(classnames, generator)`` returns the module of learned tensors;
    ``train_logits(x, fast)`` gives (B, C) logits of normalised features x (B, D) with
    gradients; ``inference_state()`` caches what inference needs (e.g. text features);
    ``infer(x)`` uses it. ``retarget(classnames)`` (where a method supports it) returns
    a copy that classifies other classes with the learned prompts (base-to-novel).
    """

    family = "prompt"
    uses_backbone = True
    Config = PromptConfig
    transfers_to_new_classes = True  # shared prompts work for any class names

    # ---- to implement ------------------------------------------------------------------
    def build(self, classnames: list[str], generator: torch.Generator) -> nn.Module:
        raise NotImplementedError

    def train_logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        raise NotImplementedError

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the training logits (KgCoOp adds its penalty)."""
        return F.cross_entropy(self.train_logits(x), y)

    def inference_state(self) -> None:
        """Cache the frozen-after-training quantities (default: nothing)."""

    def eval_logits(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        """Logits for scoring many images without gradients (chunked where it matters)."""
        return self.train_logits(x, fast)

    def infer(self, x: torch.Tensor) -> torch.Tensor:
        """(N, D) normalised features -> (N, C) logits, no gradients."""
        return self.eval_logits(x, fast=False)

    # ---- shared machinery -------------------------------------------------------------
    @property
    def scale(self) -> float:
        """CLIP's temperature exp(t) of the backbone."""
        return float(self.backbone_.logit_scale)

    def setup(self, backbone: Any, classnames: list[str], seed: int) -> None:
        """Create ``net_`` for ``classnames`` on the backbone's device."""
        self.backbone_ = backbone
        self.net_ = self.build(list(classnames), torch.Generator().manual_seed(seed)).to(backbone.device)

    def _fit(self, task: Task) -> None:
        self.text_weights_ = task.text_weights.to(task.backbone.device)  # (C, D) hand-crafted
        self.setup(task.backbone, task.classnames, task.seed)
        cfg = self.config.train_config(shots_of(task))
        self.fit_info_ = {"epochs": cfg.epochs}
        if cfg.epochs > 0:
            self.fit_info_.update(self.run_training(task, cfg))
        self.net_.requires_grad_(False)
        self.inference_state()

    def run_training(self, task: Task, cfg: TrainConfig) -> dict:
        """The shared loop over cached feature views; returns its history."""
        device = self.backbone_.device
        batches = torch.Generator().manual_seed(task.seed)

        def make_batches(epoch: int):
            return feature_batches(task.train_features, task.train_labels, cfg.batch_size, batches,
                                   augment=self.config.augment)

        def loss_fn(batch) -> torch.Tensor:
            x, y = batch
            return self.loss(F.normalize(x.to(device), dim=-1), y.to(device))

        val_score = self.val_scorer(task) if task.has_val else None
        history = train(list(self.net_.parameters()), loss_fn, make_batches, cfg, val_score=val_score,
                        autocast=self.backbone_.autocast, description=self.name)
        return {"best_epoch": history["best_epoch"], "best_val": history.get("best_val"),
                "final_loss": history["loss"][-1] if history["loss"] else None}

    def val_scorer(self, task: Task):
        """Validation accuracy of the current prompts (for epoch selection)."""
        x = F.normalize(task.val_features.to(self.backbone_.device), dim=-1)
        y = task.val_labels.to(self.backbone_.device)

        def score() -> float:
            with torch.no_grad(), self.backbone_.autocast():
                pred = self.eval_logits(x, fast=True).argmax(dim=-1)
            return float((pred == y).float().mean())

        return score

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        x = F.normalize(x.to(self.backbone_.device).float(), dim=-1)
        with self.backbone_.autocast():
            return self.infer(x).float().cpu()

    @property
    def trainable_parameters(self) -> int:
        net = getattr(self, "net_", None)
        return int(sum(p.numel() for p in net.parameters())) if net is not None else 0

    def state(self) -> dict[str, torch.Tensor]:
        return dict(self.net_.state_dict())

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        self.setup(backbone, self.classnames_, 0)
        self.net_.load_state_dict({k: v.to(backbone.device) for k, v in state.items()})
        self.net_.requires_grad_(False)
        self.inference_state()

    def retarget(self, classnames: list[str]) -> "PromptMethod":
        """A copy with the learned prompts that classifies ``classnames`` instead."""
        from vlkit.errors import VlkitError

        self._check_fitted()
        if not self.transfers_to_new_classes:
            raise VlkitError(f"{self.name} learns class-specific parameters: it cannot classify unseen classes")
        other = type(self)(self.config)
        other.classnames_, other.dim_, other.fit_info_ = list(classnames), self.dim_, dict(self.fit_info_)
        other.restore(self.state(), self.meta(), self.backbone_)
        return other
