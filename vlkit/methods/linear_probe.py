"""Linear probe: L2-regularised logistic regression on frozen features.

Radford et al. 2021, Sec. 3.2 / App. A.3: scikit-learn's L-BFGS logistic regression
on image features, the inverse regularisation strength C swept on a validation split.
We sweep C on a log grid using the validation split only, then keep the model fitted
on the training split with the chosen C.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


@dataclass
class LinearProbeConfig(MethodConfig):
    """``C``: fixed inverse regularisation, or None to choose it on validation from ``c_grid``."""

    C: float | None = None
    c_grid: list[float] = field(default_factory=lambda: [float(c) for c in np.logspace(-3, 3, 13)])
    max_iter: int = 1000
    use_augmented_views: bool = False

    def validate(self) -> None:
        self.check(self.C is None or self.C > 0, f"C must be > 0, got {self.C}")
        self.check(len(self.c_grid) > 0 and all(c > 0 for c in self.c_grid), "c_grid must hold values > 0")
        self.check(self.max_iter > 0, "max_iter must be > 0")


@register_method
class LinearProbe(Method):
    """Multinomial logistic regression on image features, C chosen on validation."""

    name = "linear-probe"
    family = "baseline"
    paper = "Radford et al., ICML 2021, Sec. 3.2 (linear-probe evaluation)"
    Config = LinearProbeConfig

    @classmethod
    def count_parameters(cls, num_classes: int, dim: int) -> int | None:
        return num_classes * dim + num_classes

    def _train(self, x: np.ndarray, y: np.ndarray, c: float) -> LogisticRegression:
        model = LogisticRegression(C=c, max_iter=self.config.max_iter, random_state=0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return model.fit(x, y)

    def _fit(self, task: Task) -> None:
        feats = task.train_features if self.config.use_augmented_views else task.train_features[:, :1]
        x = feats.reshape(-1, task.dim).numpy()  # (N * V, D)
        y = task.train_labels.repeat_interleave(feats.shape[1]).numpy()
        grid = [self.config.C] if self.config.C is not None else self.config.c_grid
        if len(grid) > 1 and task.has_val:
            vx, vy = task.val_features.numpy(), task.val_labels.numpy()
            scores = [float((self._train(x, y, c).predict(vx) == vy).mean()) for c in grid]
            best = grid[int(np.argmax(scores))]  # first of equal scores: the strongest regularisation
            self.fit_info_ = {"C": best, "val_scores": dict(zip(map(str, grid), scores))}
        else:
            best = grid[len(grid) // 2]
            self.fit_info_ = {"C": best, "val_scores": None}
        model = self._train(x, y, best)
        coef = np.zeros((task.num_classes, task.dim), dtype=np.float32)
        bias = np.full(task.num_classes, -1e4, dtype=np.float32)  # classes absent from training never win
        rows = model.classes_
        if len(rows) == 2 and model.coef_.shape[0] == 1:  # sklearn's binary form: one row
            coef[rows[1]], bias[rows[1]] = model.coef_[0], model.intercept_[0]
            bias[rows[0]] = 0.0
        else:
            coef[rows], bias[rows] = model.coef_, model.intercept_
        self.weight_ = torch.from_numpy(coef)  # (C, D)
        self.bias_ = torch.from_numpy(bias)  # (C,)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight_.T + self.bias_

    @property
    def trainable_parameters(self) -> int:
        return int(self.weight_.numel() + self.bias_.numel()) if hasattr(self, "weight_") else 0

    def state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.weight_, self.bias_ = state["weight"], state["bias"]
