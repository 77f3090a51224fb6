"""Exact savings in a causal text tower: run the prompt prefix shared by all classes once.

With a shared context at the front ("[SOS][ctx][class][.][EOS]"), positions 0..P-1 hold
the same embeddings in every class's prompt. The CLIP text transformer is causal, so
their hidden states at every layer are the same for all classes too: the surgery module
(:func:`vlkit.backbones.attention_views.encode_shared_prefix`) computes them once per
context group, and each class only runs its own suffix (class tokens, ".", EOS),
attending to the prefix's keys and values. Together with trimming after the last EOS
(the backbone hook), this is exact in real arithmetic; floats differ by rounding.

This file decides where the shortcut applies (the layout) and builds the shared rows;
towers whose blocks the surgery module cannot run this way fall back to the plain path.
"""
from __future__ import annotations

import torch

from vlkit.backbones.attention_views import encode_shared_prefix, supports_shared_prefix
from vlkit.backbones.text_tower import CausalTextTower


class SharedPrefixEncoder:
    """Encode (G, n, W) shared contexts for C classes as (G, C, D) features."""

    def __init__(self, tower: CausalTextTower, prefix: int, ctx_index: torch.Tensor) -> None:
        self.tower, self.prefix = tower, prefix
        self.ctx_index = ctx_index  # (n,) positions of the context inside the prefix

    @classmethod
    def build(cls, tower, layout, shared_front: bool) -> "SharedPrefixEncoder | None":
        """The fast path for this tower and layout, or None where it does not apply."""
        if not shared_front or not supports_shared_prefix(tower):
            return None
        index = layout.ctx_index[0]
        if not (layout.ctx_index == index).all() or int(index.max()) >= layout.shared_prefix:
            return None
        return cls(tower, layout.shared_prefix, index)

    def __call__(self, ctx: torch.Tensor, base: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """ctx (G, n, W), base (C, L, W) frozen embeddings, tokens (C, L) -> (G, C, D)."""
        p, g = self.prefix, ctx.shape[0]
        index = self.ctx_index.to(base.device)[None, :, None].expand(g, -1, base.shape[-1])
        head = base[:1, :p].expand(g, -1, -1).scatter(1, index, ctx)  # (G, P, W)
        return encode_shared_prefix(self.tower, head, base[:, p:], tokens)
