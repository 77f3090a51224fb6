"""The temperature of the zero-shot logits: configured, else the task's (the backbone's), saved with the method.

Every method that turns cosine similarities into logits (zero-shot, the cache models,
CLIP-Adapter, ZS-LP/CLAP) takes ``logit_scale: float | None`` in its config: None means
``task.logit_scale``, the backbone's ``exp(logit_scale)`` (100 for OpenAI CLIP and for
``Task.from_arrays``). The scale actually used is saved, so a loaded method predicts with it.
"""
from __future__ import annotations

from typing import Any

import torch

from vlkit.methods.task import Task

CLIP_LOGIT_SCALE = 100.0  # OpenAI CLIP's exp(logit_scale): what runs saved before the scale was saved used


def check_logit_scale(config: Any) -> None:
    """``config.logit_scale`` is None (the task's) or > 0."""
    scale = config.logit_scale
    config.check(scale is None or scale > 0, f"logit_scale must be > 0 or None (the model's), got {scale}")


def resolve_logit_scale(configured: float | None, task: Task) -> float:
    """The configured scale, or (None) the task's."""
    return float(configured if configured is not None else task.logit_scale)


def logit_scale_state(scale: float) -> torch.Tensor:
    """The resolved scale as a saved tensor."""
    return torch.tensor(scale, dtype=torch.float64)


def restored_logit_scale(state: dict[str, torch.Tensor], configured: float | None) -> float:
    """The saved scale (any shape holding one number); states written before it was saved used the
    configured one, else CLIP's 100."""
    if "logit_scale" in state:
        return float(state["logit_scale"].reshape(-1)[0])
    return float(configured if configured is not None else CLIP_LOGIT_SCALE)
