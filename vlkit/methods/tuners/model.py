"""TunedCLIP: a tuner's own view of the frozen backbone (shared weights, own modules)."""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from vlkit.backbones.surgery import Block, TokenSource, prompt_tokens, shared_copy, split_tower_attention, trainable
from vlkit.backbones.text_tower import normalize, text_tower_of
from vlkit.methods.tuners.wrappers import TunerDropout


class TunedCLIP(nn.Module):
    """A :func:`~vlkit.backbones.surgery.shared_copy` of ``backbone.model`` whose ``towers``
    have split attention, ready for injection.

    ``blocks[tower]`` lists the tower's layers (see :class:`~vlkit.backbones.surgery.Block`).
    The frozen modules always run in eval mode; :meth:`tuning` switches only the
    tuners' own dropout. :meth:`add_image_tokens` makes every image pass carry prompt tokens.
    """

    def __init__(self, backbone, towers: Sequence[str]) -> None:
        super().__init__()
        self.model = shared_copy(backbone.model).eval()
        self.towers = tuple(towers)
        self.blocks: dict[str, list[Block]] = {t: split_tower_attention(self.model, t) for t in self.towers}
        self.text = text_tower_of(self.model)
        self._image_tokens: dict | None = None

    def add_image_tokens(self, tokens: TokenSource, start: int) -> None:
        """Insert ``tokens`` (per layer) at ``start`` in every image pass (shallow + deep)."""
        self._image_tokens = {"prompts": tokens, "start": start, "insert": True}

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
        tokens = self._image_tokens
        with prompt_tokens(self.model, "image", **tokens) if tokens else contextlib.nullcontext():
            return normalize(self.model.encode_image(images))

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """(M, L) token ids -> (M, D) normalised features through the (tuned) text tower."""
        return normalize(self.text.encode_embeddings(self.text.token_embedding(tokens), tokens))
