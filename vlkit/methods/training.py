"""One plain training loop shared by every trained method.

Optimiser (SGD or AdamW), a cosine schedule stepped per epoch (constant warm-up then
cosine, as Dassl/CoOp) or per batch (annealed over epochs x batches, as Tip-Adapter's
and APE's code), mixed precision on CUDA, gradient clipping, a progress bar, and epoch
selection on validation: after each epoch the validation score is computed and the
best parameters are restored at the end. With ``keep_initial`` the starting state is a
candidate too (scored before the first step), so a method that starts from the
zero-shot classifier never returns something worse on validation than where it began. Determinism comes from the caller's
``torch.Generator`` (batches) and ``torch.manual_seed`` (initialisation).
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

from vlkit.errors import VlkitError
from vlkit.progress import progress


@dataclass
class TrainConfig:
    """Optimiser and schedule settings; methods fill them from their paper defaults."""

    epochs: int = 10
    lr: float = 2e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 5e-4
    eps: float = 1e-8
    batch_size: int = 32
    warmup_epochs: int = 0
    warmup_lr: float = 1e-5
    schedule: str = "cosine"
    step: str = "epoch"  # "epoch": one lr per epoch (Dassl); "batch": cosine over epochs x batches
    grad_clip: float | None = None
    select_on_val: bool = True
    keep_initial: bool = False  # the state before training is a selection candidate (epoch -1)

    def validate(self) -> None:
        """Raise VlkitError for impossible settings."""
        if self.epochs < 1 or self.batch_size < 1 or self.lr <= 0:
            raise VlkitError(f"epochs, batch_size and lr must be positive, got {self.epochs}, {self.batch_size}, {self.lr}")
        if self.optimizer not in ("sgd", "adamw") or self.schedule not in ("cosine", "constant"):
            raise VlkitError(f"optimizer must be sgd|adamw and schedule cosine|constant, got {self.optimizer}, {self.schedule}")
        if self.step not in ("epoch", "batch"):
            raise VlkitError(f"step must be epoch|batch, got {self.step!r}")


def lr_at(cfg: TrainConfig, epoch: int, batch: int = 0, batches_per_epoch: int = 1) -> float:
    """Learning rate of ``batch`` (0-based) in ``epoch`` (0-based).

    Per epoch: constant warm-up, then ``lr/2 (1 + cos(pi e / epochs))`` (Dassl's
    ``CosineAnnealingLR(T_max=epochs)`` stepped after each epoch). Per batch: the same
    cosine over ``t = epoch * batches_per_epoch + batch`` of ``epochs * batches_per_epoch``
    steps (``CosineAnnealingLR(T_max=epochs * iters)`` stepped after each batch).
    """
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    if cfg.schedule == "constant":
        return cfg.lr
    done = epoch - cfg.warmup_epochs
    if cfg.step == "batch":
        return 0.5 * cfg.lr * (1 + math.cos(math.pi * (done * batches_per_epoch + batch)
                                            / (cfg.epochs * batches_per_epoch)))
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * done / cfg.epochs))


def make_optimizer(params: list[nn.Parameter], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum or AdamW, per ``cfg``."""
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay, eps=cfg.eps)


def feature_batches(features: torch.Tensor, labels: torch.Tensor, batch_size: int,
                    generator: torch.Generator, augment: bool = True) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (x (B, D), y (B,)) batches from (N, V, D) cached views.

    With ``augment`` and V > 1, each image contributes one randomly chosen augmented
    view (1..V-1) per epoch: "random crop each epoch" from the cache.
    """
    n, v, _ = features.shape
    order = torch.randperm(n, generator=generator)
    if augment and v > 1:
        views = torch.randint(1, v, (n,), generator=generator)
    else:
        views = torch.zeros(n, dtype=torch.long)
    x = features[order, views[order]]  # (N, D)
    y = labels[order]
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, n, batch_size)]


def snapshot(params: list[nn.Parameter]) -> list[torch.Tensor]:
    """Detached copies of ``params``."""
    return [p.detach().clone() for p in params]


def train(
    params: list[nn.Parameter], loss_fn: Callable[[Any], torch.Tensor],
    make_batches: Callable[[int], Iterable[Any]], cfg: TrainConfig,
    val_score: Callable[[], float] | None = None, autocast: Callable[[], Any] | None = None,
    description: str = "training",
) -> dict:
    """Train ``params`` for ``cfg.epochs``; keep the epoch with the best ``val_score``.

    ``make_batches(epoch)`` returns that epoch's batches; ``loss_fn(batch)`` a scalar.
    Returns the history: per-epoch mean loss and validation score, the chosen epoch.
    """
    cfg.validate()
    if not params:
        raise VlkitError("nothing to train: the method has no trainable parameters")
    optimizer = make_optimizer(params, cfg)
    amp_ctx = autocast or contextlib.nullcontext
    device_type = params[0].device.type
    scaler = torch.amp.GradScaler(device_type, enabled=device_type == "cuda")
    history: dict[str, Any] = {"loss": [], "val": [], "best_epoch": cfg.epochs - 1}
    best_score, best_params = -math.inf, None
    selecting = val_score is not None and cfg.select_on_val
    if selecting and cfg.keep_initial:
        best_score, best_params = float(val_score()), snapshot(params)
        history["initial_val"], history["best_epoch"] = best_score, -1
    with progress(total=cfg.epochs, description=description) as bar:
        for epoch in range(cfg.epochs):
            batches = make_batches(epoch)
            if cfg.step == "batch":
                batches = list(batches)
            total, count = 0.0, 0
            for i, batch in enumerate(batches):
                if i == 0 or cfg.step == "batch":
                    for group in optimizer.param_groups:
                        group["lr"] = lr_at(cfg, epoch, i, len(batches) if cfg.step == "batch" else 1)
                with amp_ctx():
                    loss = loss_fn(batch)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip:
                    scaler.unscale_(optimizer)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                scaler.step(optimizer)
                scaler.update()
                total, count = total + float(loss.detach()), count + 1
            history["loss"].append(total / max(count, 1))
            if selecting:
                score = float(val_score())
                history["val"].append(score)
                if score > best_score:  # strict: ties keep the earlier epoch
                    best_score, best_params = score, snapshot(params)
                    history["best_epoch"] = epoch
            bar.advance()
    if best_params is not None:
        with torch.no_grad():
            for p, best in zip(params, best_params):
                p.copy_(best)
        history["best_val"] = best_score
    return history
