"""CoCoOp: conditional context optimisation (Zhou et al., Conditional Prompt Learning for
Vision-Language Models, CVPR 2022).

A light meta-net ``h`` (Linear d -> d/16, ReLU, Linear d/16 -> w) turns each image's
feature x into a token ``pi = h(x)`` that shifts every context vector:
``v_m(x) = v_m + pi`` (Sec. 3.2, the conditional context), so each image gets its own
prompts ``t_i(x) = {v_1(x), ..., v_M(x), c_i}`` and
``p(y|x) = softmax_i(cos(g(t_i(x)), x) / tau)`` (Sec. 3.2, the prediction probability;
the paper's equation numbers could not be checked offline, so the formulas are written out).

The reference trains with batch 1 because it builds one prompt set per image in a
loop. Here a batch of B images becomes one (B, C) grid of prompts through the text
tower (the shared prefix runs once per image), so any batch size is exact.

Paper defaults: 4 context tokens from "a photo of a", SGD lr 0.002, cosine, one
warm-up epoch at 1e-5, 10 epochs, batch 1. Batch 1 stays the default: at the same
learning rate, batch 8 takes 8x fewer steps and scored lower (41.0% vs 48.1% on a
Fashion-MNIST development split, vlkit-mini, 16 shots) for no gain in CPU time, since
the text tower sees B x C prompts either way. Larger batches pay off on GPUs; raise
``lr`` with them.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.registry import register_method
from vlkit.prompts.base import PromptConfig, PromptMethod
from vlkit.prompts.encoder import PromptedTextEncoder


def seeded_linear(n_in: int, n_out: int, generator: torch.Generator) -> nn.Linear:
    """nn.Linear with PyTorch's default U(-1/sqrt(n_in), 1/sqrt(n_in)) init from ``generator``."""
    layer = nn.Linear(n_in, n_out)
    bound = 1.0 / math.sqrt(n_in)
    with torch.no_grad():
        layer.weight.copy_(torch.rand(n_out, n_in, generator=generator) * 2 * bound - bound)
        layer.bias.copy_(torch.rand(n_out, generator=generator) * 2 * bound - bound)
    return layer


class ConditionalPrompts(nn.Module):
    """Context vectors + meta-net: (B, D) image features -> (B, n, W) per-image contexts."""

    def __init__(self, encoder: PromptedTextEncoder, dim: int, reduction: int, generator: torch.Generator) -> None:
        super().__init__()
        self.encoder = encoder
        hidden = max(1, dim // reduction)
        self.meta_net = nn.Sequential(seeded_linear(dim, hidden, generator), nn.ReLU(),
                                      seeded_linear(hidden, encoder.width, generator))

    def contexts(self, x: torch.Tensor) -> torch.Tensor:
        """(B, D) normalised features -> (B, n, W): ``v_m + pi(x)`` (Sec. 3.2)."""
        shift = self.meta_net(x.to(self.encoder.ctx.dtype))  # (B, W)
        return self.encoder.ctx[None] + shift[:, None]


@dataclass
class CoCoOpConfig(PromptConfig):
    """``n_ctx`` / ``ctx_init`` as CoOp; ``reduction`` of the meta-net's hidden width."""

    n_ctx: int = 4
    ctx_init: str = "a photo of a"
    reduction: int = 16
    batch_size: int = 1
    chunk: int = 4096  # at most this many prompts through the text tower at once (inference)
    # Quick schedule: CoCoOp runs the text tower on every (image, class) pair at batch 1: its paper's
    # 10 epochs at 16 shots are 16,000 prompt passes (~90 s on 2 cores), so the quick run takes 1, unwarmed.
    quick = {"epochs": 1, "warmup_epochs": 0}

    def validate(self) -> None:
        super().validate()
        self.check(self.n_ctx >= 1 and self.reduction >= 1, "n_ctx and reduction must be >= 1")
        self.check(self.chunk >= 1, f"chunk must be >= 1, got {self.chunk}")

    def default_epochs(self, shots: int) -> int:
        return 10


@register_method
class CoCoOp(PromptMethod):
    """Per-image prompts from a meta-net; the text tower runs on B x C prompts per step."""

    name = "cocoop"
    paper = ("Zhou et al., Conditional Prompt Learning for Vision-Language Models, "
             "CVPR 2022 (Sec. 3.2, conditional context and prediction)")
    Config = CoCoOpConfig

    def build(self, classnames: list[str], generator: torch.Generator) -> nn.Module:
        cfg = self.config
        encoder = PromptedTextEncoder(self.backbone_, classnames, n_ctx=None if cfg.ctx_init else cfg.n_ctx,
                                      init=cfg.ctx_init or None, generator=generator)
        return ConditionalPrompts(encoder, self.dim_, cfg.reduction, generator)

    def train_logits(self, x: torch.Tensor, fast: bool = True) -> torch.Tensor:
        text = F.normalize(self.net_.encoder.encode(self.net_.contexts(x), fast=fast).float(), dim=-1)  # (B, C, D)
        return self.scale * torch.einsum("bd,bcd->bc", x, text)

    def eval_logits(self, x: torch.Tensor, fast: bool) -> torch.Tensor:
        step = max(1, self.config.chunk // len(self.classnames_))
        return torch.cat([self.train_logits(x[i:i + step], fast=fast) for i in range(0, len(x), step)])
