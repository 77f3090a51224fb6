"""TunedCLIP: a tuner's own view of the frozen backbone (shared weights, own modules)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from vlkit.backbones.text_tower import normalize, text_tower_of
from vlkit.methods.tuners.inject import Block, prepare_tower, shared_copy, trainable
from vlkit.methods.tuners.wrappers import TunerDropout


class TunedCLIP(nn.Module):
    """A :func:`shared_copy` of ``backbone.model`` whose ``towers`` are ready for injection.

    ``blocks[tower]`` lists the tower's layers (see :class:`~vlkit.methods.tuners.inject.Block`).
    The frozen modules always run in eval mode; :meth:`tuning` switches only the
    tuners' own dropout.
    """

    def __init__(self, backbone, towers: Sequence[str]) -> None:
        super().__init__()
        self.model = shared_copy(backbone.model).eval()
        self.towers = tuple(towers)
        self.blocks: dict[str, list[Block]] = {t: prepare_tower(self.model, t) for t in self.towers}
        self.text = text_tower_of(self.model)

    def tuning(self, on: bool) -> None:
        """Turn the tuners' dropout on (training) or off (evaluation)."""
        self.model.eval()
        for module in self.model.modules():
            if isinstance(module, TunerDropout):
                module.train(on)

    def parameters_to_train(self) -> dict[str, nn.Parameter]:
        """name -> parameter of every trainable (tuner-owned) tensor."""
        return trainable(self.model)

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) -> (N, D) normalised features through the (tuned) image tower."""
        return normalize(self.model.encode_image(images))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) token ids -> (M, D) normalised features through the (tuned) text tower."""
        return normalize(self.text.encode_embeddings(self.text.token_embedding(tokens), tokens))
