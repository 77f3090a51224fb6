"""Linear probe: L2-regularised logistic regression on frozen features.

Radford et al. 2021, Sec. 3.2 / App. A.3: scikit-learn's L-BFGS logistic regression
(at most 1,000 iterations) on image features, the L2 strength ``lambda = 1 / C`` chosen
on a validation split over 1e-6..1e6. The search is the one the few-shot CLIP
literature runs for this baseline (CoOp's ``lpclip/linear_probe.py``, LP++'s
``methods/linear_probe.py``): a coarse sweep over ``C`` in {1e6, 1e4, ..., 1e-6}, then
8 steps of a binary search in log10 C between ``C*/10`` and ``10 C*`` around the best
coarse value ``C*``: at each step both ends are fitted and scored on validation, the
better end is kept and the other end moves to the log-midpoint; the chosen ``C`` is the
end kept at the last step, and the model fitted there is the result.

Departures (docs/fidelity.md, "Linear probe"):
- ties go to the candidate nearest (log10 C) the centre of the coarse sweep's best
  plateau, then to the smaller C (the reference: coarse ties to the largest C, binary
  ties to the smaller end, which lands at C ~ 1e5 when every score ties; the plateau's
  centre is farthest from where accuracy falls off, and C = 1 when nothing differs);
- CLIP's paper sweeps 96 log-spaced values; this search (CoOp's, LP++'s) covers the
  same range in 7 + up to 16 fits, memoised by C;
- ``fit_info_["val_scores"]`` is ``[C, accuracy]`` pairs in numeric order.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task

COARSE_GRID = [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6]


def pick_tied(candidates: list[float], scores: list[float], centre: float) -> float:
    """The best-scoring C; among ties the one nearest ``centre`` (log10), then the smaller C."""
    top = max(scores)
    tied = [c for c, s in zip(candidates, scores) if s == top]
    return min(tied, key=lambda c: (abs(math.log10(c) - centre), c))


def plateau_centre(grid: list[float], scores: list[float]) -> float:
    """log10 of the middle of the best-scoring C values of a sweep (the span's midpoint)."""
    top = max(scores)
    logs = [math.log10(c) for c, s in zip(grid, scores) if s == top]
    return 0.5 * (min(logs) + max(logs))


def search_c(score: Callable[[float], float], grid: list[float], steps: int) -> float:
    """Coarse sweep over ``grid``, then ``steps`` of log-space binary search; the chosen C."""
    coarse = [score(c) for c in grid]
    centre = plateau_centre(grid, coarse)
    peak = pick_tied(grid, coarse, centre)
    left, right = math.log10(peak) - 1, math.log10(peak) + 1
    chosen = peak
    for _ in range(steps):
        c_left, c_right = 10.0 ** left, 10.0 ** right
        chosen = pick_tied([c_left, c_right], [score(c_left), score(c_right)], centre)
        if chosen == c_right:
            left = 0.5 * (left + right)
        else:
            right = 0.5 * (left + right)
    return chosen


@dataclass
class LinearProbeConfig(MethodConfig):
    """``C``: fixed inverse regularisation, or None to search it on validation.

    ``c_grid``: the coarse sweep; ``search_steps``: binary-search steps after it (0: the
    sweep alone). Without validation data the middle of ``c_grid`` is used.
    """

    C: float | None = None
    c_grid: list[float] = field(default_factory=lambda: list(COARSE_GRID))
    search_steps: int = 8
    max_iter: int = 1000
    use_augmented_views: bool = False

    def validate(self) -> None:
        self.check(self.C is None or self.C > 0, f"C must be > 0, got {self.C}")
        self.check(len(self.c_grid) > 0 and all(c > 0 for c in self.c_grid), "c_grid must hold values > 0")
        self.check(self.search_steps >= 0, f"search_steps must be >= 0, got {self.search_steps}")
        self.check(self.max_iter > 0, "max_iter must be > 0")


@register_method
class LinearProbe(Method):
    """Multinomial logistic regression on image features, C searched on validation."""

    name = "linear-probe"
    family = "baseline"
    paper = "Radford et al., ICML 2021, Sec. 3.2 and App. A.3 (linear-probe evaluation)"
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
        grid = sorted(self.config.c_grid)
        fitted: dict[float, tuple[LogisticRegression, float]] = {}
        if self.config.C is None and task.has_val and (len(grid) > 1 or self.config.search_steps > 0):
            vx, vy = task.val_features.numpy(), task.val_labels.numpy()

            def score(c: float) -> float:
                if c not in fitted:
                    model = self._train(x, y, c)
                    fitted[c] = (model, float((model.predict(vx) == vy).mean()))
                return fitted[c][1]

            best = search_c(score, grid, self.config.search_steps)
            tried = sorted((c, s) for c, (_, s) in fitted.items())
            self.fit_info_ = {"C": best, "val_scores": [[c, s] for c, s in tried], "fits": len(tried)}
        else:
            best = self.config.C if self.config.C is not None else grid[(len(grid) - 1) // 2]
            self.fit_info_ = {"C": best, "val_scores": None, "fits": 1}
        model = fitted[best][0] if best in fitted else self._train(x, y, best)
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
