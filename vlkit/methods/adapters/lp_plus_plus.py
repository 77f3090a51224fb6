"""LP++ (Huang et al., "LP++: A Surprisingly Strong Linear Probe for Few-Shot CLIP", CVPR 2024).

Logits ``l_ik = f_i^T (w_k + alpha_k t_k) + b_k`` (Sec. 3): visual prototypes ``w_k``
plus text weights ``t_k`` blended by learnable class-wise ``alpha_k``, fitted by block
coordinate descent with data-driven step sizes (Sec. 4, from the Lipschitz constants
of the cross-entropy gradient): ``eta_w = 4N / lambda_max(F^T F)`` for ``W`` (SGD with
momentum 0.9, full batch) and ``eta_alpha = N / (4 max_k sum_i (f_i^T t_k)^2)`` for
``alpha``, updated every 10 steps with the gradient accumulated over them, as the
authors' code. Initialisation (authors' code): ``w_k`` = the sum of class-k features,
``alpha`` = 250 * the mean over classes of the mean zero-shot score of class k on its
own samples, bias 0. 300 full-batch epochs; the epoch with the best validation
accuracy is kept. LP++ uses its own full-batch solver, not the shared minibatch loop.
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
    """Epochs, the alpha update period, and whether cached augmented views join the data."""

    epochs: int = 300
    alpha_every: int = 10
    use_augmented_views: bool = False

    def validate(self) -> None:
        self.check(self.epochs >= 1 and self.alpha_every >= 1, "epochs and alpha_every must be >= 1")


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
        feats = task.train_features if self.config.use_augmented_views else task.train_features[:, :1]
        x = F.normalize(feats.reshape(-1, task.dim), dim=-1)  # (N, D)
        y = task.train_labels.repeat_interleave(feats.shape[1])
        n, c = len(x), task.num_classes
        self.text_weights_ = task.text_weights.clone()  # (C, D)
        text_scores = x @ self.text_weights_.T  # (N, C)
        one_hot = F.one_hot(y, c).float()  # (N, C)
        counts = one_hot.sum(0).clamp(min=1)
        w = (one_hot.T @ x).requires_grad_(True)  # (C, D) class sums
        b = torch.zeros(c, requires_grad=True)
        own = (one_hot * text_scores).sum(0) / counts  # (C,) mean own-class zero-shot score
        alpha = torch.full((c,), 250.0 * float(own.mean()), requires_grad=True)
        lr_w = 4 * n / float(torch.linalg.eigvalsh(x.T @ x).max())
        lr_alpha = n / (4 * float((text_scores ** 2).sum(0).max()))
        optimizer = torch.optim.SGD([w, b], lr=lr_w, momentum=0.9)
        best, best_state, best_epoch = -1.0, None, 0
        for epoch in range(self.config.epochs):
            loss = F.cross_entropy(self._forward(x, w, b, alpha), y)
            optimizer.zero_grad()
            loss.backward()  # alpha.grad accumulates until its block step
            optimizer.step()
            if (epoch + 1) % self.config.alpha_every == 0:
                with torch.no_grad():
                    alpha -= lr_alpha * alpha.grad
                alpha.grad = None
            if task.has_val:
                with torch.no_grad():
                    score = float((self._forward(task.val_features, w, b, alpha).argmax(-1) == task.val_labels)
                                  .float().mean())
                if score > best:  # strict: ties keep the earlier epoch (as vlkit.methods.training)
                    best, best_state, best_epoch = score, snapshot([w, b, alpha]), epoch
        final = best_state if best_state is not None else snapshot([w, b, alpha])
        self.weight_, self.bias_, self.alpha_ = final
        self.fit_info_ = {"best_epoch": best_epoch if best_state is not None else self.config.epochs - 1,
                          "best_val": best if best_state is not None else None, "lr_w": lr_w, "lr_alpha": lr_alpha}

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
