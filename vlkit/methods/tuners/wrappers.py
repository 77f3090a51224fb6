"""Base class for modules that wrap a frozen ``nn.Linear`` role."""
from __future__ import annotations

import torch
from torch import nn


class LinearWrapper(nn.Module):
    """Holds the frozen ``base`` Linear and looks like it (``weight``, ``bias``, sizes).

    open_clip reads ``mlp.c_fc.weight.dtype`` to pick its cast dtype, so a wrapper must
    expose the wrapped layer's attributes.
    """

    def __init__(self, base: nn.Module) -> None:
        super().__init__()
        self.base = base

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self) -> torch.Tensor | None:
        return self.base.bias

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features


class TunerDropout(nn.Dropout):
    """Dropout owned by a tuner: the only dropout switched on while tuning.

    The frozen towers stay in eval mode during training (their own dropout, e.g.
    BERT's, stays off), so only the tuner's regularisation is random.
    """
