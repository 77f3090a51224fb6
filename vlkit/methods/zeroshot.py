"""Zero-shot CLIP: ``logits = s * f @ W.T`` (Radford et al. 2021, Sec. 3.1.4 / Fig. 1)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from vlkit.methods.base import Method, MethodConfig
from vlkit.methods.registry import register_method
from vlkit.methods.task import Task


@dataclass
class ZeroShotConfig(MethodConfig):
    """``logit_scale``: CLIP's learned temperature (100 for OpenAI models)."""

    logit_scale: float = 100.0

    def validate(self) -> None:
        self.check(self.logit_scale > 0, f"logit_scale must be > 0, got {self.logit_scale}")


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

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.config.logit_scale * F.normalize(x, dim=-1) @ self.text_weights_.T  # (N, C)

    def state(self) -> dict[str, torch.Tensor]:
        return {"text_weights": self.text_weights_}

    def restore(self, state: dict[str, torch.Tensor], meta: dict, backbone) -> None:
        self.text_weights_ = state["text_weights"]
