"""(IA)^3: learned rescaling of keys, values and feed-forward activations.

Liu et al., "Few-Shot Parameter-Efficient Fine-Tuning is Better and Cheaper than
In-Context Learning", NeurIPS 2022, Sec. 3.3: ``softmax(Q (l_k * K^T) / sqrt(d)) (l_v * V)``
and ``(l_ff * gamma(W1 x)) W2``, with ``l_k, l_v, l_ff`` initialised to ones (identity).
Here ``l_k``/``l_v`` scale the outputs of the k/v projections and ``l_ff`` the input of
the second feed-forward layer (as PEFT's IA3 does for feed-forward modules).
"""
from __future__ import annotations

import torch
from torch import nn

from vlkit.methods.tuners.wrappers import LinearWrapper


class IA3Linear(LinearWrapper):
    """``base(x) * l`` (``side="out"``) or ``base(x * l)`` (``side="in"``), ``l`` = ones at start."""

    def __init__(self, base: nn.Module, side: str) -> None:
        super().__init__(base)
        if side not in ("in", "out"):
            raise ValueError(f"side must be 'in' or 'out', got {side!r}")
        self.side = side
        size = base.in_features if side == "in" else base.out_features
        self.ia3_l = nn.Parameter(torch.ones(size, device=base.weight.device, dtype=base.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.ia3_l.to(x.dtype)  # (in,) or (out,)
        if self.side == "in":
            return self.base(x * scale)
        return self.base(x) * scale
