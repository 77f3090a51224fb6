"""Visual prompt tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022).

VPT-shallow, Eq. (3)-(5): ``[x_1, Z_1, E_1] = L_1([x_0, P, E_0])``: P learned tokens sit
between the class token and the patch tokens at the input of the first layer only.
VPT-deep, Eq. (6): every layer i gets its own prompts, ``[x_i, _, E_i] =
L_i([x_{i-1}, P_{i-1}, E_{i-1}])``; the previous layer's outputs at prompt positions
are dropped. Prompts are removed before pooling, so the class token (or the patch
mean) is read exactly where open_clip reads it. Initialisation: uniform Xavier with
fan-in from the patch size (the authors' code), ``val = sqrt(6 / (3 p^2 + W))``.
The tokens go in through :func:`vlkit.backbones.surgery.prompt_tokens` (as MaPLe's).
"""
from __future__ import annotations

import math

import torch
from torch import nn

PROMPT_START = 1  # right after the class token


def vpt_prompts(layers: int, tokens: int, width: int, patch_size: int, device: torch.device) -> nn.Parameter:
    """(layers, tokens, W) prompts drawn from U(-val, val), ``val = sqrt(6 / (3 p^2 + W))``."""
    val = math.sqrt(6.0 / float(3 * patch_size * patch_size + width))
    return nn.Parameter(torch.empty(layers, tokens, width, device=device).uniform_(-val, val))


class LayerPrompts:
    """``layer -> (P, W)`` tokens for :func:`~vlkit.backbones.surgery.prompt_tokens`: the
    layer's prompts through the tuner's dropout, None past the prompted layers."""

    def __init__(self, prompts: nn.Parameter, dropout: nn.Module) -> None:
        self.prompts, self.dropout = prompts, dropout

    def __call__(self, layer: int) -> torch.Tensor | None:
        if layer >= self.prompts.shape[0]:
            return None
        return self.dropout(self.prompts[layer])  # (P, W)
