"""Zero-shot CLIP: ``logits = s * f @ W.T`` (Radford et al. 2021, Sec. 3.1.4 / Fig. 1).

s is the model's learned temperature ``exp(logit_scale)`` (``task.logit_scale``, filled
from the backbone: 100 for OpenAI CLIP, 35.39 for vlkit-mini v2); an explicit ``logit_scale``
overrides it. The scale never changes the prediction (argmax), only the probabilities;
the scale used is saved with the method.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.logit_scale import check_logit_scale, logit_scale_state, resolve_logit_scale, restored_logit_scale
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


@dataclass
class ZeroShotConfig(MethodConfig):
    """``logit_scale``: CLIP's learned temperature; None takes the task's (the backbone's)."""

    logit_scale: float | None = None

    def validate(self) -> None:
        check_logit_scale(self)


@register_method
class ZeroShot(Method):
    """Classify by cosine similarity to the template-ensemble text weights; no training."""

    name = "zero-shot"
    family = "baseline"
    paper = "Radford et al., Learning Transferable Visual Models From Natural Language Supervision, ICML 2021"
    Config = ZeroShotConfig

    @classmethod
    def count_parameters(cls, num_classes: int, dim: int) -> int | None:
        return 0

    def _fit(self, task: Task) -> None:
        self.text_weights_ = task.text_weights.clone()  # (C, D)
        self.logit_scale_ = resolve_logit_scale(self.config.logit_scale, task)

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.logit_scale_ * F.normalize(x, dim=-1) @ self.text_weights_.T  # (N, C)

    def state(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_, "logit_scale": logit_scale_state(self.logit_scale_)}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.text_weights_ = state["text_weights"]
        self.logit_scale_ = restored_logit_scale(state, self.config.logit_scale)
