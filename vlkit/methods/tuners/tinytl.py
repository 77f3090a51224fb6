"""TinyTL (Cai et al., "TinyTL: Reduce Memory, Not Parameters for Efficient On-Device Learning",
NeurIPS 2020): bias-only updates plus lite residual modules.

Sec. 3.1: training only the biases needs no stored activations for weight gradients, so
memory falls; Sec. 3.2: lite residual modules beside each block restore capacity at a
small activation cost because they run at reduced resolution (the input is downsampled
2x, the branch is narrow, its output is upsampled and added to the block's output). On a
ViT we transcribe the CNN module as: the patch-token grid is average-pooled 2x2, a
bottleneck W -> W/r -> W (GELU) runs on the pooled tokens (and on the class token),
and the result is upsampled (nearest) back to the grid and added to the block output.
The branch's last layer starts at zero, so the tuned model starts as the frozen one.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.backbones.surgery import add_block_branch, select_blocks, tower_modules, train_clones
from vlkit.methods.registry import register_method
from vlkit.methods.tuners.base import TunerConfig, TunerMethod
from vlkit.methods.tuners.model import TunedCLIP


class LiteResidual(nn.Module):
    """(N, 1 + g*g, W) tokens -> (N, 1 + g*g, W): a narrow branch at half the grid resolution, zero at init."""

    def __init__(self, width: int, hidden: int, downsample: int = 2, device: torch.device | None = None) -> None:
        super().__init__()
        self.downsample = downsample
        self.down = nn.Linear(width, hidden, device=device)
        self.up = nn.Linear(hidden, width, device=device)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(F.gelu(self.down(x.to(self.down.weight.dtype))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, length, width = x.shape
        grid = math.isqrt(length - 1)
        if grid * grid != length - 1 or self.downsample == 1:  # not a square patch grid: no pooling
            return self.branch(x)
        cls, patches = x[:, :1], x[:, 1:].transpose(1, 2).reshape(n, width, grid, grid)  # (N, W, g, g)
        pooled = F.avg_pool2d(patches, self.downsample, ceil_mode=True)  # (N, W, g', g')
        small = self.branch(pooled.flatten(2).transpose(1, 2))  # (N, g'*g', W)
        side = small.transpose(1, 2).reshape(n, width, *pooled.shape[2:])
        side = F.interpolate(side, size=(grid, grid), mode="nearest").flatten(2).transpose(1, 2)  # (N, g*g, W)
        return torch.cat([self.branch(cls), side], dim=1)


@dataclass
class TinyTLConfig(TunerConfig):
    """Biases + lite residuals of the image tower; bottleneck W/4 (reduction 4), 2x downsampling (Sec. 3.2)."""

    # Few-step learning rate (TunerConfig.quick): 70.4% at 16 shots on Fashion-MNIST-mini against zero-shot's
    # 27.6%, over half of any schedule's possible gain, so the quick job runs it.
    quick = {**TunerConfig.quick, "lr": 1e-2}
    tower: str = "image"
    reduction: int = 4
    downsample: int = 2
    lr: float = 1e-3

    def validate(self) -> None:
        super().validate()
        self.check(self.reduction >= 1 and self.downsample >= 1,
                   f"reduction and downsample must be >= 1, got {self.reduction}, {self.downsample}")


@register_method
class TinyTL(TunerMethod):
    """Bias-only updates plus zero-initialised lite residual branches beside every image-tower block."""

    name = "tinytl"
    paper = ("Cai et al., TinyTL: Reduce Memory, Not Parameters for Efficient On-Device Learning, NeurIPS 2020, "
             "Sec. 3.1 (bias-only) and 3.2 (lite residual learning)")
    Config = TinyTLConfig
    towers_allowed = ("image",)

    def inject(self, tuned: TunedCLIP) -> None:
        c = self.config
        for _, module in tower_modules(tuned.model, "image"):
            train_clones(module, lambda _, name: name == "bias")
        for block in select_blocks(tuned.blocks["image"], c.layers):
            first = next(tuned.model.get_submodule(block.path).parameters())
            width = tuned.model.get_submodule(block.fc1).in_features
            branch = LiteResidual(width, max(1, width // c.reduction), c.downsample, device=first.device)
            add_block_branch(tuned.model, "image", block, "lite_residual", branch)
