"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024).

Logits ``l_ik = f_i^T (w_k + alpha_k t_k) + b_k`` (Sec. 3): visual prototypes ``w_k``
plus zero-shot text weights ``t_k`` blended by learnable class-wise ``alpha_k``, fitted
by block coordinate descent with data-driven step sizes (Sec. 4, from the Lipschitz
constants of the cross-entropy gradient). The authors' code
(FereshteShakeri/FewShot-CLIP-Strong-Baseline, ``methods/linear_probe_p2.py``), which
this follows step for step:

- data: one augmented pass over the support set (one random crop + flip per image),
  L2-normalised; full batch, 300 epochs;
- ``W`` starts at the per-class *sum* of features, the bias ``b`` at ``nn.Linear``'s
  default ``U(-1/sqrt(D), 1/sqrt(D))``, every ``alpha_k`` at 250 x the mean over classes
  of the mean zero-shot score ``f_i^T t_k`` of class k on its own samples;
- ``(W, b)``: SGD, momentum 0.9, no weight decay, ``lr = 4N / lambda_max(F^T F)``, every epoch;
- ``alpha``: every 10 epochs ``alpha -= N / (4 max_k sum_i (f_i^T t_k)^2) * alpha.grad``,
  where ``alpha.grad`` is never zeroed: each update uses the gradient summed over every
  epoch since the start;
- after each epoch the validation accuracy is computed; the last of the best epochs
  (``>=``) is kept (the state before training is not a candidate, as in the reference).

Departures (docs/fidelity.md, "LP++"):
- the augmented pass is the feature store's cached view 1 (random resized crop, scale
  0.5-1, + flip), not a fresh crop;
- the bias draw comes from a generator seeded with the task's seed (the reference draws
  it from the global RNG after the weight's own draw);
- float32 throughout (the reference runs in CLIP's float16 on GPU).

Besides these, the two departures every method shares (docs/fidelity.md): selection on
the task's validation split (the test split is never read while fitting), cached views.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task
from vlkit.methods.training import snapshot


@dataclass
class LPPlusPlusConfig(MethodConfig):
    """Epochs, the alpha update period, and which cached views form the training set.

    ``augmented_pass``: train on one cached augmented view per image (the reference's one
    augmented pass); False: on the evaluation view. ``use_augmented_views``: on every
    cached view (overrides ``augmented_pass``).
    """

    epochs: int = 300
    alpha_every: int = 10
    use_augmented_views: bool = False
    augmented_pass: bool = True

    def validate(self) -> None:
        self.check(self.epochs >= 1 and self.alpha_every >= 1, "epochs and alpha_every must be >= 1")


def training_views(features: torch.Tensor, augmented_pass: bool, all_views: bool) -> tuple[torch.Tensor, str]:
    """(N, V, D) cached views -> (N, V', D) and its name: every view, view 1 (one augmented pass), or view 0."""
    if all_views:
        return features, "all"
    if augmented_pass and features.shape[1] > 1:
        return features[:, 1:2], "augmented"
    return features[:, :1], "eval"


def linear_default_bias(classes: int, dim: int, seed: int) -> torch.Tensor:
    """(C,) ``nn.Linear(dim, classes)``'s default bias draw, ``U(-1/sqrt(dim), 1/sqrt(dim))``, seeded."""
    bound = 1.0 / dim ** 0.5
    return torch.empty(classes).uniform_(-bound, bound, generator=torch.Generator().manual_seed(seed))


@register_method
class LPPlusPlus(Method):
    """Linear probe whose class weights blend visual prototypes and text embeddings."""

    name = "lp++"
    family = "adapter"
    paper = "Huang et al., LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP, CVPR 2024, Sec. 3-4"
    Config = LPPlusPlusConfig

    def _forward(self, x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
        """(N, D) -> (N, C): ``x W^T + b + alpha * (x T^T)``."""
        return x @ w.T + b + alpha * (x @ self.text_weights_.T)

    def _fit(self, task: Task) -> None:
        c = self.config
        feats, view_name = training_views(task.train_features, c.augmented_pass, c.use_augmented_views)
        x = F.normalize(feats.reshape(-1, task.dim), dim=-1)  # (N, D)
        y = task.train_labels.repeat_interleave(feats.shape[1])
        n, k = len(x), task.num_classes
        self.text_weights_ = task.text_weights.clone()  # (C, D)
        text_scores = x @ self.text_weights_.T  # (N, C)
        one_hot = F.one_hot(y, k).float()  # (N, C)
        counts = one_hot.sum(0).clamp(min=1)
        w = (one_hot.T @ x).requires_grad_(True)  # (C, D) class sums
        b = linear_default_bias(k, task.dim, task.seed).requires_grad_(True)  # (C,)
        own = (one_hot * text_scores).sum(0) / counts  # (C,) mean own-class zero-shot score
        alpha = torch.full((k,), 250.0 * float(own.mean()), requires_grad=True)
        lr_w = 4 * n / float(torch.linalg.eigvalsh(x.T @ x).max())
        lr_alpha = n / (4 * float((text_scores ** 2).sum(0).max()))
        optimizer = torch.optim.SGD([w, b], lr=lr_w, momentum=0.9)
        best, best_state, best_epoch = -1.0, None, 0
        for epoch in range(self.config.epochs):
            loss = F.cross_entropy(self._forward(x, w, b, alpha), y)
            optimizer.zero_grad()  # zeroes W and b only: alpha.grad keeps summing, as the reference
            loss.backward()
            optimizer.step()
            if (epoch + 1) % self.config.alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
            if task.has_val:
                with torch.no_grad():
                    score = float((self._forward(task.val_features, w, b, alpha).argmax(-1) == task.val_labels)
                                  .float().mean())
                if score >= best:  # ties keep the later epoch, as the reference
                    best, best_state, best_epoch = score, snapshot([w, b, alpha]), epoch
        final = best_state if best_state is not None else snapshot([w, b, alpha])
        self.weight_, self.bias_, self.alpha_ = final
        self.fit_info_ = {"best_epoch": best_epoch if best_state is not None else self.config.epochs - 1,
                          "best_val": best if best_state is not None else None, "lr_w": lr_w, "lr_alpha": lr_alpha,
                          "train_view": view_name}

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward(F.normalize(x, dim=-1), self.weight_, self.bias_, self.alpha_)

    @property
    def trainable_parameters(self) -> int:
        if not hasattr(self, "weight_"):
            return 0
        return int(self.weight_.numel() + self.bias_.numel() + self.alpha_.numel())

    def state(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight_, "bias": self.bias_, "alpha": self.alpha_, "text_weights": self.text_weights_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.weight_, self.bias_, self.alpha_ = state["weight"], state["bias"], state["alpha"]
        self.text_weights_ = state["text_weights"]
