"""The shared Method for every tuner: build a TunedCLIP, train its tuner, classify.

Training follows CLIP-LoRA (Zanella & Ben Ayed, CVPRW 2024, Sec. 4): cross-entropy on
``logit_scale * cos(image, class text)``, AdamW (weight decay 1e-2), batch 32,
``iters_per_shot * shots`` iterations on a cosine schedule. Image-tower tuners encode
a freshly augmented batch (``backbone.train_transform``) every step; text-only tuners
read cached augmented image features from the store. The iterations are split into
``val_checks`` chunks that the shared loop (:func:`vlkit.methods.training.train`) treats as
epochs: the validation split is scored after each and the best chunk is kept; the
untrained tuner (the frozen model, for identity-initialised tuners) is scored first and
kept when no chunk beats it.

Class text weights: with the text tower tuned, the first ``max_templates`` templates
run through it (CLIP-LoRA uses the dataset's single template); otherwise the frozen
text tower encodes every template of the task (the zero-shot ensemble).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
import torch.nn.functional as F

from vlkit.errors import VlkitError
from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.task import Task
from vlkit.methods.training import TrainConfig, feature_batches, train
from vlkit.methods.tuners.model import TunedCLIP
from vlkit.features.text_weights import fill_templates

TOWER_CHOICES = {"image": ("image",), "text": ("text",), "both": ("image", "text")}


@dataclass
class TunerConfig(MethodConfig):
    """Where to tune and how long; tuner configs add their own fields."""

    tower: str = "both"
    layers: list[int] | None = None  # block indices to tune (negative from the end); None = all
    lr: float = 2e-4
    weight_decay: float = 1e-2
    batch_size: int = 32
    iters_per_shot: int = 500
    val_checks: int = 10
    max_templates: int = 1
    grad_clip: float | None = None
    # Quick schedule: 2 iterations of 16 images per shot (CLIP-LoRA: 500 of 32), one validation
    # check. Each tuner adds the larger learning rate so few steps need: chosen on the validation
    # split (Fashion-MNIST, vlkit-mini, one seed); benchmarks/tuners_fewshot.py reads it too.
    quick = {"iters_per_shot": 2, "batch_size": 16, "val_checks": 1}

    def validate(self) -> None:
        self.check(self.tower in TOWER_CHOICES, f"tower must be one of {sorted(TOWER_CHOICES)}, got {self.tower!r}")
        self.check(self.lr > 0 and self.weight_decay >= 0, f"lr must be > 0 and weight_decay >= 0, got {self.lr}, "
                   f"{self.weight_decay}")
        self.check(self.batch_size >= 1 and self.iters_per_shot >= 1 and self.val_checks >= 1,
                   "batch_size, iters_per_shot and val_checks must be >= 1")
        self.check(self.max_templates >= 1, f"max_templates must be >= 1, got {self.max_templates}")


class TunerMethod(Method):
    """Base of the registered tuners; a subclass implements :meth:`inject`."""

    family = "tuner"
    input_kind = "images"  # per instance: "features" when only the text tower is tuned
    uses_backbone = True
    towers_allowed: tuple[str, ...] = ("image", "text", "both")
    keep_initial = True  # the untrained tuner is a selection candidate

    def __init__(self, config: MethodConfig | None = None, **overrides: Any) -> None:
        super().__init__(config, **overrides)
        if self.config.tower not in self.towers_allowed:
            raise VlkitError(f"{self.name} tunes the {' or '.join(self.towers_allowed)} tower, "
                             f"got tower={self.config.tower!r}")
        self.towers = TOWER_CHOICES[self.config.tower]
        self.input_kind = "images" if "image" in self.towers else "features"  # type: ignore[misc]

    # ---- to implement -------------------------------------------------------------------
    def inject(self, tuned: TunedCLIP) -> None:
        """Add this tuner's modules/parameters to ``tuned`` (towers ``self.towers``)."""
        raise NotImplementedError

    # ---- building -----------------------------------------------------------------------
    def build(self, backbone) -> TunedCLIP:
        """A fresh TunedCLIP of ``backbone`` with this tuner injected (at its identity init)."""
        self._autocast, self._device = backbone.autocast, backbone.device
        tuned = TunedCLIP(backbone, self.towers)
        self.inject(tuned)
        return tuned

    def _class_tokens(self, backbone) -> torch.Tensor:
        return backbone.tokenize(fill_templates(self.classnames_, self.templates_))  # (C * T, L)

    def _text_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """(C, D) normalised class weights: mean over templates of the prompt features."""
        feats = self.tuned_.encode_tokens(tokens).view(len(self.classnames_), len(self.templates_), -1)
        return F.normalize(feats.mean(dim=1), dim=-1)

    def _finalize(self, backbone) -> None:
        """Evaluation state: dropout off, class weights computed once."""
        self.tuned_.tuning(False)
        with torch.no_grad(), backbone.autocast():
            self.text_weights_ = self._text_weights(self._class_tokens(backbone)).float().cpu()  # (C, D)

    # ---- the protocol -------------------------------------------------------------------
    def _fit(self, task: Task) -> None:
        backbone = task.backbone
        if "image" in self.towers and task.train_images is None:
            raise VlkitError(f"{self.name} tunes the image tower: build the task with images "
                             "(vlkit.protocols.fewshot.build_task(..., with_images=True))")
        tuned_text = "text" in self.towers
        self.templates_ = list(task.templates[:self.config.max_templates] if tuned_text else task.templates)
        self.logit_scale_ = float(backbone.logit_scale)
        self.tuned_ = self.build(backbone)
        params = list(self.tuned_.parameters_to_train().values())
        tokens = self._class_tokens(backbone)
        live = self._weights_train()
        if not live:
            self._finalize(backbone)
        shots = max(1, round(len(task.train_labels) / task.num_classes))
        total = self.config.iters_per_shot * shots
        chunks = min(self.config.val_checks, total)
        per_chunk = math.ceil(total / chunks)
        generator = torch.Generator().manual_seed(task.seed)
        stream = self._batches(task, generator)

        def loss_fn(batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
            x, y = batch[0].to(backbone.device), batch[1].to(backbone.device)
            weights = self._training_weights(tokens) if live else self.text_weights_.to(backbone.device)
            feats = self.tuned_.encode_images(x) if "image" in self.towers else F.normalize(x, dim=-1)
            return F.cross_entropy(self.logit_scale_ * feats @ weights.T, y)

        val_x = self._val_inputs(task) if task.has_val else None

        def val_score() -> float:
            if live:
                self._finalize(backbone)
            self.tuned_.tuning(False)
            pred = self._logits(val_x).argmax(dim=-1)
            self.tuned_.tuning(True)
            return float((pred == task.val_labels).float().mean())

        cfg = TrainConfig(epochs=chunks, lr=self.config.lr, optimizer="adamw", weight_decay=self.config.weight_decay,
                          batch_size=self.config.batch_size, grad_clip=self.config.grad_clip,
                          select_on_val=task.has_val, keep_initial=self.keep_initial)
        self.tuned_.tuning(True)
        history = train(params, loss_fn, lambda _: (next(stream) for _ in range(per_chunk)), cfg,
                        val_score if task.has_val else None, backbone.autocast, description=f"tuning {self.name}")
        self._finalize(backbone)
        self.fit_info_ = {"iterations": per_chunk * chunks, "best_chunk": history["best_epoch"],
                          "chunks": chunks, "initial_val": history.get("initial_val"), "val": history["val"],
                          "loss": history["loss"], "batch_size": self.config.batch_size}

    def _weights_train(self) -> bool:
        """Whether the class weights change while training (then recomputed for each validation)."""
        return "text" in self.towers

    def _training_weights(self, tokens: torch.Tensor) -> torch.Tensor:
        """(C, D) class weights the loss uses while they train (``tokens``: the class prompts)."""
        return self._text_weights(tokens)

    def _batches(self, task: Task, generator: torch.Generator) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Endless (x, y) batches: augmented images, or cached augmented features."""
        labels, bs = task.train_labels, self.config.batch_size
        if "image" not in self.towers:
            while True:
                yield from feature_batches(task.train_features, labels, bs, generator)
        backbone = task.backbone
        pils = [task.train_images.image(i) for i in range(len(task.train_images))]
        while True:
            order = torch.randperm(len(pils), generator=generator)
            for start in range(0, len(order), bs):
                idx = order[start:start + bs]
                images = torch.stack([backbone.train_transform(pils[i]) for i in idx.tolist()])  # (B, 3, H, W)
                yield images.to(backbone.device), labels[idx]

    def _val_inputs(self, task: Task) -> torch.Tensor:
        """(M, D) cached validation features, or (M, 3, H, W) preprocessed images."""
        if "image" not in self.towers:
            return task.val_features
        if task.val_images is None:
            raise VlkitError(f"{self.name} selects on validation images: build the task with_images=True")
        return torch.stack([task.backbone.preprocess(task.val_images.image(i)) for i in range(len(task.val_images))])

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if "image" in self.towers:
            with torch.no_grad(), self._autocast():
                feats = torch.cat([self.tuned_.encode_images(x[i:i + 256].to(self._device)).float().cpu()
                                   for i in range(0, len(x), 256)])  # (N, D)
        else:
            feats = F.normalize(x.float().cpu(), dim=-1)
        return self.logit_scale_ * feats @ self.text_weights_.T  # (N, C)

    @property
    def trainable_parameters(self) -> int:
        if not hasattr(self, "tuned_"):
            return 0
        return int(sum(p.numel() for p in self.tuned_.parameters_to_train().values()))

    def state(self) -> dict[str, torch.Tensor]:
        return {name: p.detach() for name, p in self.tuned_.parameters_to_train().items()}

    def meta(self) -> dict:
        return {**super().meta(), "templates": self.templates_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone: Any) -> None:
        self.templates_ = list(meta["templates"])
        self.logit_scale_ = float(backbone.logit_scale)
        self.tuned_ = self.build(backbone)
        params = self.tuned_.parameters_to_train()
        if set(params) != set(state):
            missing, extra = sorted(set(params) - set(state))[:3], sorted(set(state) - set(params))[:3]
            raise VlkitError(f"saved {self.name} state does not fit this config/backbone: "
                             f"missing {missing}, extra {extra}")
        with torch.no_grad():
            for name, p in params.items():
                p.copy_(state[name].to(p.device, p.dtype))
        self._finalize(backbone)
