"""Prefix tuning: learned key/value vectors prepended at every attention layer.

Li & Liang, "Prefix-Tuning: Optimizing Continuous Prompts for Generation", ACL 2021,
Sec. 4.2, Eq. (3): activations at prefix positions are free parameters ``P_theta`` at
every layer, and every real token attends to them. As PEFT's default, the per-layer key
and value prefixes are trained directly (Sec. 4.3's MLP reparameterisation is only a
training aid and is dropped after training). The default initialisation is the frozen
tower's own keys/values of a real phrase (Sec. 7.4: real-word initialisation helps in
low-data settings). Zero-length prefixes are the frozen model exactly.
"""
from __future__ import annotations

import torch
from torch import nn


class Prefix(nn.Module):
    """``length`` learned (key, value) pairs for one attention layer: two (P, W) tensors."""

    def __init__(self, length: int, width: int, init_std: float, device: torch.device | None = None) -> None:
        super().__init__()
        self.key = nn.Parameter(torch.randn(length, width, device=device) * init_std)  # (P, W)
        self.value = nn.Parameter(torch.randn(length, width, device=device) * init_std)  # (P, W)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.key, self.value
