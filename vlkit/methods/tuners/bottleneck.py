"""Bottleneck adapters: Houlsby et al. (ICML 2019) and AdaptFormer (Chen et al., NeurIPS 2022).

Houlsby (Sec. 2.1, Fig. 2): after the attention out-projection and after the second
feed-forward layer, before the residual sum, ``h <- h + up(act(down(h)))``.
AdaptFormer (Eq. 2-3): a parallel branch on the feed-forward input,
``x_l = MLP(LN(x')) + s * up(ReLU(down(LN(x')))) + x'`` with ``s = 0.1``.
Both start as the identity: the up-projection (and its bias) is zero (AdaptFormer's
initialisation; Houlsby used a near-zero Gaussian instead).
"""
from __future__ import annotations

import torch
from torch import nn

from vlkit.methods.tuners.wrappers import LinearWrapper, TunerDropout

ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU}


class Bottleneck(nn.Module):
    """``up(dropout(act(down(x))))``: width -> bottleneck -> width, up-projection zero."""

    def __init__(self, width: int, bottleneck: int, activation: str = "relu", dropout: float = 0.0,
                 device: torch.device | None = None) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck, device=device)
        self.act = ACTIVATIONS[activation]()
        self.dropout = TunerDropout(dropout) if dropout > 0 else nn.Identity()
        self.up = nn.Linear(bottleneck, width, device=device)
        nn.init.zeros_(self.down.bias)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.dropout(self.act(self.down(x.to(self.down.weight.dtype)))))


class SerialAdapter(LinearWrapper):
    """Houlsby: ``h = base(x); h + adapter(h)``."""

    def __init__(self, base: nn.Module, adapter: Bottleneck) -> None:
        super().__init__(base)
        self.adapter = adapter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.base(x)
        return h + self.adapter(h).to(h.dtype)


class _Tap:
    """Plain holder (not a Module) passing the feed-forward input to the parallel branch."""

    value: torch.Tensor | None = None


class InputTap(LinearWrapper):
    """Wraps the first feed-forward layer and records its input for :class:`ParallelAdapter`."""

    def __init__(self, base: nn.Module, tap: _Tap) -> None:
        super().__init__(base)
        self._tap = tap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._tap.value = x
        return self.base(x)


class ParallelAdapter(LinearWrapper):
    """AdaptFormer: wraps the second feed-forward layer, ``base(h) + s * adapter(x_ffn_in)``."""

    def __init__(self, base: nn.Module, adapter: Bottleneck, tap: _Tap, scale: float) -> None:
        super().__init__(base)
        self.adapter = adapter
        self.scale = scale
        self._tap = tap

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x, self._tap.value = self._tap.value, None
        if x is None:
            raise RuntimeError("AdaptFormer branch ran without its feed-forward input (tap not called)")
        return self.base(h) + self.scale * self.adapter(x).to(h.dtype)


def parallel_pair(fc1: nn.Module, fc2: nn.Module, bottleneck: int, scale: float, activation: str,
                  dropout: float) -> tuple[InputTap, ParallelAdapter]:
    """The two wrappers of one AdaptFormer branch (the adapter is registered once, on fc2)."""
    tap = _Tap()
    adapter = Bottleneck(fc1.in_features, bottleneck, activation, dropout, device=fc1.weight.device)
    return InputTap(fc1, tap), ParallelAdapter(fc2, adapter, tap, scale)
