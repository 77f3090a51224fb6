"""Visual prompt tuning (Jia et al., "Visual Prompt Tuning", ECCV 2022).

VPT-shallow, Eq. (3)-(5): ``[x_1, Z_1, E_1] = L_1([x_0, P, E_0])``: P learned tokens sit
between the class token and the patch tokens at the input of the first layer only.
VPT-deep, Eq. (6): every layer i gets its own prompts, ``[x_i, _, E_i] =
L_i([x_{i-1}, P_{i-1}, E_{i-1}])``; the previous layer's outputs at prompt positions
are dropped. Prompts are removed before pooling, so the class token (or the patch
mean) is read exactly where open_clip reads it. Initialisation: uniform Xavier with
fan-in from the patch size (the authors' code), ``val = sqrt(6 / (3 p^2 + W))``.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from vlkit.methods.tuners.wrappers import TunerDropout


class PromptedTransformer(nn.Module):
    """Wraps open_clip's ViT ``transformer``: inserts prompts after the class token."""

    def __init__(self, base: nn.Module, tokens: int, deep: bool, patch_size: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.deep = deep
        width = base.width
        layers = len(base.resblocks) if deep else 1
        val = math.sqrt(6.0 / float(3 * patch_size * patch_size + width))
        device = next(base.parameters()).device
        self.prompts = nn.Parameter(torch.empty(layers, tokens, width, device=device).uniform_(-val, val))  # (Lp, P, W)
        self.dropout = TunerDropout(dropout) if dropout > 0 else nn.Identity()

    @property
    def resblocks(self) -> nn.ModuleList:
        return self.base.resblocks

    @property
    def width(self) -> int:
        return self.base.width

    def get_cast_dtype(self) -> torch.dtype:
        return self.base.get_cast_dtype()

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """(N, 1 + G, W) tokens after ``ln_pre`` -> (N, 1 + G, W), prompts removed."""
        if not self.base.batch_first:
            x = x.transpose(0, 1)
        n, count = x.shape[0], self.prompts.shape[1]
        for i, block in enumerate(self.base.resblocks):
            if i == 0 or (self.deep and i < self.prompts.shape[0]):
                prompts = self.dropout(self.prompts[i]).to(x.dtype).expand(n, -1, -1)  # (N, P, W)
                rest = x[:, 1:] if i == 0 else x[:, 1 + count:]
                x = torch.cat([x[:, :1], prompts, rest], dim=1)  # (N, 1 + P + G, W)
            x = _run_block(block, x, attn_mask, self.base.batch_first)
        x = torch.cat([x[:, :1], x[:, 1 + count:]], dim=1)  # drop prompt positions
        return x if self.base.batch_first else x.transpose(0, 1)


def _run_block(block: nn.Module, x: torch.Tensor, attn_mask: torch.Tensor | None, batch_first: bool) -> torch.Tensor:
    if batch_first:
        return block(x, attn_mask=attn_mask)
    return block(x.transpose(0, 1), attn_mask=attn_mask).transpose(0, 1)
