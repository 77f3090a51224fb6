"""Head2Toe (Evci et al., "Head2Toe: Utilizing Intermediate Representations for Better Transfer
Learning", ICML 2022).

Sec. 3: the features of every layer of the frozen backbone, pooled to a fixed size and
normalised, are concatenated with the final ones (head to toe); a linear head is trained on
all of them with a group-lasso penalty, Eq. (2), ``lambda * sum_j ||W_j||_2`` over the rows
``W_j`` (one row per feature, C columns); the row norms rank the features, the top fraction is
kept (the fraction chosen on validation) and a new linear head is trained on the kept
features alone. Here every block's output is pooled to the class token and the patch-token
mean (the store's per-layer features; the paper pools ViT tokens with 1-d average pooling
to a target size), each feature is standardised with the training set's mean and std, and
the kept fraction is chosen on the validation split from ``fractions`` (ties: fewer features).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.base import MethodConfig
from vlkit.methods.intermediate.base import LayerInputs, LayerMethod, layer_inputs, view_batches
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, train


def head_to_toe_features(layers: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
    """(..., depth, 2, W) layer features and (..., D) final features -> (..., depth * 2 * W + D)."""
    return torch.cat([layers.flatten(-3), final], dim=-1)


def group_lasso(weight: torch.Tensor) -> torch.Tensor:
    """Eq. (2)'s penalty without lambda: the sum over features j of ``||W_j||_2`` ((F, C) weight, one row per feature)."""
    return weight.norm(dim=1).sum()


def feature_scores(weight: torch.Tensor) -> torch.Tensor:
    """(F,) relevance of each feature: the L2 norm of its row of the group-lasso head."""
    return weight.detach().norm(dim=1)


def select_features(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """(k,) ascending indices of the ``k = max(1, round(fraction F))`` highest scores (ties: lower index)."""
    k = max(1, round(fraction * len(scores)))
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


@dataclass
class Head2ToeConfig(MethodConfig):
    """Group-lasso lambda 1e-3 and the kept fractions are ours (the paper searches both on validation)."""

    fractions: list[float] = field(default_factory=lambda: [0.02, 0.05, 0.1, 0.2, 0.5, 1.0])
    lasso: float = 1e-3
    epochs: int = 30
    lr: float = 1e-2
    weight_decay: float = 1e-4
    batch_size: int = 32

    def validate(self) -> None:
        self.check(len(self.fractions) > 0 and all(0 < f <= 1 for f in self.fractions),
                   f"fractions must be a non-empty list of values in (0, 1], got {self.fractions}")
        self.check(self.lasso >= 0 and self.weight_decay >= 0, "lasso and weight_decay must be >= 0")
        self.check(self.epochs >= 1 and self.lr > 0 and self.batch_size >= 1, "epochs, lr and batch_size must be positive")


@register_method
class Head2Toe(LayerMethod):
    """A linear head on group-lasso-selected features from every layer of the frozen image tower."""

    name = "head2toe"
    paper = ("Evci et al., Head2Toe: Utilizing Intermediate Representations for Better Transfer Learning, "
             "ICML 2022, Sec. 3, Eq. (2) (group-lasso feature selection)")
    Config = Head2ToeConfig

    def head_logits(self, layers: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        x = head_to_toe_features(layers.to(self._device).float(), final.to(self._device).float())
        x = (x[..., self.selected_.to(self._device)] - self.mean_.to(self._device)) / self.std_.to(self._device)
        return self.head_(x)  # (N, C)

    def _train_head(self, x: torch.Tensor, labels: torch.Tensor, val: tuple | None, lasso: float,
                    seed: int) -> tuple[nn.Linear, dict]:
        """A linear head on standardised (N, V, F') features, group lasso ``lasso``; epochs chosen on ``val``."""
        c, n, views = self.config, x.shape[0], x.shape[1]
        head = nn.Linear(x.shape[-1], len(self.classnames_)).to(self._device)
        nn.init.zeros_(head.weight)
        nn.init.zeros_(head.bias)
        generator = torch.Generator().manual_seed(seed)

        def batches(_: int):
            for rows, view in view_batches(n, views, c.batch_size, generator):
                yield x[rows, view].to(self._device), labels[rows].to(self._device)

        def loss_fn(batch) -> torch.Tensor:
            xb, yb = batch
            return F.cross_entropy(head(xb), yb) + lasso * group_lasso(head.weight.T)

        def val_score() -> float:
            with torch.no_grad():
                return float((head(val[0].to(self._device)).argmax(dim=-1).cpu() == val[1]).float().mean())

        cfg = TrainConfig(epochs=c.epochs, lr=c.lr, optimizer="adamw", weight_decay=c.weight_decay,
                          batch_size=c.batch_size, select_on_val=val is not None)
        history = train(list(head.parameters()), loss_fn, batches, cfg, val_score if val is not None else None,
                        description="training head2toe")
        return head, history

    def _fit(self, task: Task) -> None:
        self._backbone, self._device = task.backbone, task.backbone.device
        inputs: LayerInputs = layer_inputs(task, self.name)
        x = head_to_toe_features(inputs.train_layers, inputs.train_final)  # (N, V, F)
        mean, std = x.flatten(0, 1).mean(dim=0), x.flatten(0, 1).std(dim=0).clamp_min(1e-6)  # (F,)
        x = (x - mean) / std
        has_val = inputs.val_layers is not None and task.has_val
        val_x = (head_to_toe_features(inputs.val_layers, inputs.val_final) - mean) / std if has_val else None
        lasso_head, _ = self._train_head(x, task.train_labels, None, self.config.lasso, task.seed)
        scores = feature_scores(lasso_head.weight.T)  # (F,)
        best = None
        tried = {}
        for fraction in sorted(self.config.fractions):
            keep = select_features(scores, fraction)
            val = (val_x[:, keep], task.val_labels) if has_val else None
            head, history = self._train_head(x[..., keep], task.train_labels, val, 0.0, task.seed)
            score = history.get("best_val", 0.0)
            tried[str(fraction)] = score
            if best is None or score > best[0]:  # strict: ties keep the smaller fraction
                best = (score, fraction, keep, head)
        _, fraction, keep, head = best
        self.selected_, self.mean_, self.std_, self.head_ = keep, mean[keep], std[keep], head
        self.fit_info_ = {"features": int(x.shape[-1]), "fraction": fraction, "kept": int(len(keep)),
                          "fraction_val": tried, "batch_size": self.config.batch_size}

    @property
    def trainable_parameters(self) -> int:
        return int(sum(p.numel() for p in self.head_.parameters())) if hasattr(self, "head_") else 0

    def state(self) -> dict[str, torch.Tensor]:
        return {"selected": self.selected_, "mean": self.mean_, "std": self.std_,
                "head.weight": self.head_.weight.detach(), "head.bias": self.head_.bias.detach()}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self._backbone, self._device = backbone, backbone.device
        self.selected_, self.mean_, self.std_ = state["selected"].long(), state["mean"], state["std"]
        weight = state["head.weight"]
        self.head_ = nn.Linear(weight.shape[1], weight.shape[0]).to(self._device)
        with torch.no_grad():
            self.head_.weight.copy_(weight)
            self.head_.bias.copy_(state["head.bias"])
