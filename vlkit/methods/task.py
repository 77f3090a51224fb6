"""A few-shot task: what every method's ``fit`` receives (features, labels, text weights)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from vlkit.errors import ShapeError


def as_tensor(x: Any, name: str, ndim: tuple[int, ...], dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Convert an array-like to a tensor and check its number of dimensions."""
    if x is None:
        raise ShapeError(f"{name} is required")
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    if t.ndim not in ndim:
        raise ShapeError(f"{name} must have {' or '.join(map(str, ndim))} dimensions, got shape {tuple(t.shape)}")
    if not t.is_floating_point() and dtype.is_floating_point:
        raise ShapeError(f"{name} must be floating point, got {t.dtype}")
    return t.to(dtype)


@dataclass
class Task:
    """Cached inputs of one few-shot problem.

    ``train_features`` is (N, V, D): view 0 is the evaluation transform, views 1..V-1
    are cached augmented views (random resized crop + flip). ``text_weights`` is the
    (C, D) zero-shot classifier of the task's templates. ``train_norms`` (N, V), when the
    features come from the store, holds each view's L2 norm before normalising (the raw
    feature is ``norm * feature``; cache keys average raw views). Image-tower methods also get
    the image datasets. Nothing here holds test data.
    """

    classnames: list[str]
    text_weights: torch.Tensor  # (C, D), rows L2-normalised
    train_features: torch.Tensor  # (N, V, D)
    train_labels: torch.Tensor  # (N,) int64
    val_features: torch.Tensor | None = None  # (M, D)
    val_labels: torch.Tensor | None = None  # (M,)
    templates: list[str] = field(default_factory=lambda: ["a photo of a {}."])
    backbone: Any = None  # vlkit.Backbone, for methods that run a tower
    train_images: Any = None  # ImageDataset, for methods that change the image tower
    val_images: Any = None
    unlabeled_features: torch.Tensor | None = None  # (U, D), e.g. a target domain
    seed: int = 0
    extras: dict = field(default_factory=dict)
    logit_scale: float = 100.0  # the backbone's exp(logit_scale); 100 is OpenAI CLIP's
    train_norms: torch.Tensor | None = None  # (N, V) pre-normalisation norms of train_features' views

    def __post_init__(self) -> None:
        self.text_weights = as_tensor(self.text_weights, "text_weights", (2,))
        feats = as_tensor(self.train_features, "train_features", (2, 3))
        self.train_features = feats[:, None] if feats.ndim == 2 else feats
        self.train_labels = torch.as_tensor(np.asarray(self.train_labels)).long()
        n, _, d = self.train_features.shape
        c = len(self.classnames)
        if self.text_weights.shape != (c, d):
            raise ShapeError(
                f"text_weights must be (classes={c}, dim={d}), got {tuple(self.text_weights.shape)}"
            )
        if self.train_labels.shape != (n,):
            raise ShapeError(f"labels must be ({n},) for {n} training features, got {tuple(self.train_labels.shape)}")
        if n and (self.train_labels.min() < 0 or self.train_labels.max() >= c):
            raise ShapeError(f"labels must be in 0..{c - 1}")
        if self.train_norms is not None:
            self.train_norms = as_tensor(self.train_norms, "train_norms", (1, 2))
            self.train_norms = self.train_norms[:, None] if self.train_norms.ndim == 1 else self.train_norms
            if self.train_norms.shape != self.train_features.shape[:2]:
                raise ShapeError(f"train_norms must be (N, V) = {tuple(self.train_features.shape[:2])} like "
                                 f"train_features' views, got {tuple(self.train_norms.shape)}")
        if not self.logit_scale > 0:
            raise ShapeError(f"logit_scale must be > 0, got {self.logit_scale}")
        if self.val_features is not None:
            self.val_features = as_tensor(self.val_features, "val_features", (2,))
            self.val_labels = torch.as_tensor(np.asarray(self.val_labels)).long()
            if self.val_features.shape[1] != d or self.val_labels.shape != (self.val_features.shape[0],):
                raise ShapeError(
                    f"validation features must be (M, {d}) with M labels, got {tuple(self.val_features.shape)} "
                    f"and {tuple(self.val_labels.shape)}"
                )

    @property
    def num_classes(self) -> int:
        """C."""
        return len(self.classnames)

    @property
    def dim(self) -> int:
        """D."""
        return self.train_features.shape[-1]

    @property
    def has_val(self) -> bool:
        """Whether validation data exists for selection."""
        return self.val_features is not None and len(self.val_features) > 0

    @classmethod
    def from_arrays(cls, features: Any, labels: Any, text_weights: Any, val_features: Any = None,
                    val_labels: Any = None, classnames: list[str] | None = None,
                   logit_scale: float = 100.0) -> "Task":
        """scikit-learn style inputs -> Task (class names default to "class 0".."class C-1")."""
        weights = as_tensor(text_weights, "text_weights", (2,))
        names = classnames or [f"class {i}" for i in range(weights.shape[0])]
        return cls(classnames=names, text_weights=weights, train_features=features, train_labels=labels,
                   val_features=val_features, val_labels=val_labels, logit_scale=logit_scale)
