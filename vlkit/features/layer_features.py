"""Per-layer image features: each image-tower block's output, pooled to two tokens.

For every block ``i`` of the image tower the output tokens (N, L, W) are pooled to
(N, 2, W): row 0 is the class token, row 1 the mean of the other tokens (the patch
tokens). :func:`layer_tokens` computes them with the frozen backbone (no gradient);
:meth:`vlkit.features.store.FeatureStore.layer_features` caches them, one entry per
layer under the store's content keys, so methods that read intermediate layers (LST,
Head2Toe, model ranking by layer) train from the store without running the tower.
"""
from __future__ import annotations

import torch

from vlkit.backbones.surgery import block_outputs, tower_depth, tower_width

POOLING = "cls+patch-mean"  # part of the store key: another pooling never reads these entries
POOLED_TOKENS = 2


def pool_tokens(tokens: torch.Tensor) -> torch.Tensor:
    """(N, L, W) block output -> (N, 2, W): the class token and the mean of the remaining tokens."""
    return torch.stack([tokens[:, 0], tokens[:, 1:].mean(dim=1)], dim=1)


def layer_shape(backbone) -> tuple[int, int, int]:
    """(depth, 2, W) of one image's per-layer features for ``backbone``."""
    model = backbone.model
    return tower_depth(model, "image"), POOLED_TOKENS, tower_width(model, "image")


@torch.no_grad()
def layer_tokens(backbone, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 3, H, W) preprocessed images -> raw final features (N, D) (before normalising) and the
    pooled output of every image-tower block (N, depth, 2, W), float32, one frozen forward pass."""
    with block_outputs(backbone.model, "image") as outputs, backbone.autocast():
        final = backbone.model.encode_image(images.to(backbone.device))  # (N, D)
    layers = torch.stack([pool_tokens(x) for x in outputs], dim=1)  # (N, depth, 2, W)
    return final.float(), layers.float()
