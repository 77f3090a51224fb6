"""LoRA: low-rank updates of frozen projections (Hu et al., ICLR 2022).

Eq. (3) of the paper: ``h = W0 x + dW x = W0 x + B A x`` with ``B`` (out, r) zero at
initialisation and ``A`` (r, in) random, scaled by ``alpha / r`` (Sec. 4.1). CLIP-LoRA
(Zanella & Ben Ayed, CVPRW 2024) scales by ``alpha / sqrt(r)`` and applies dropout to
the input of the low-rank branch only; both scalings are offered.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.methods.tuners.wrappers import LinearWrapper, TunerDropout


class LoRALinear(LinearWrapper):
    """``base(x) + s * B(A(dropout(x)))``; ``merge()`` folds ``s B A`` into a new weight."""

    def __init__(self, base: nn.Module, rank: int, alpha: float, dropout: float = 0.0,
                 scaling: str = "sqrt") -> None:
        super().__init__(base)
        self.rank = rank
        self.scaling = alpha / (math.sqrt(rank) if scaling == "sqrt" else rank)
        weight = base.weight
        self.lora_A = nn.Parameter(torch.empty(rank, weight.shape[1], device=weight.device, dtype=weight.dtype))
        self.lora_B = nn.Parameter(torch.zeros(weight.shape[0], rank, device=weight.device, dtype=weight.dtype))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))  # nn.Linear's default, as loralib
        self.dropout = TunerDropout(dropout) if dropout > 0 else nn.Identity()
        self.merged_weight: torch.Tensor | None = None  # a new tensor, never the shared one

    def delta(self) -> torch.Tensor:
        """(out, in) ``s * B @ A``."""
        return self.scaling * (self.lora_B @ self.lora_A)

    def merge(self) -> None:
        """Use ``W0 + s B A`` as one weight: no extra matmul at inference."""
        with torch.no_grad():
            self.merged_weight = self.base.weight + self.delta()

    def unmerge(self) -> None:
        """Back to the separate low-rank branch (for further training)."""
        self.merged_weight = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged_weight is not None:
            return F.linear(x, self.merged_weight.to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        low = self.dropout(x) @ self.lora_A.to(x.dtype).T  # (..., r)
        return self.base(x) + self.scaling * (low @ self.lora_B.to(x.dtype).T)  # (..., out)
