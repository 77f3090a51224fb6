"""The module that gets exported: preprocessed images (N, 3, H, W) -> logits (N, C) and probabilities (N, C).

:func:`classifier_module` builds it from a fitted method and its backbone. Feature-level
methods run the frozen image tower and then their folded head (:mod:`.heads`).
Methods that change the image tower keep their layers: tuners (adapters, VPT tokens,
IA3 scales, BitFit biases) run their tuned tower; LoRA is merged first, its low-rank
update added into new ``nn.Linear`` weights; MaPLe runs the image tower with its
vision prompts. Their class weights (the text side) are computed once and fixed.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from vlkit.apps.export.heads import FEATURE_HEADS, NOT_FOLDABLE, TEXT_TUNERS, LinearHead
from vlkit.errors import VlkitError


class NotExportableError(VlkitError):
    """The method's learned state cannot be folded into a fixed graph (the message says why)."""


class ImageTowerModule(nn.Module):
    """Registers only ``model.visual`` (the image tower) as a submodule, and keeps ``model`` as a plain
    reference: a traced or quantised export then holds the image tower's weights, never the text tower's."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.visual = model.visual
        object.__setattr__(self, "clip", model)  # not registered: no text tower in the artifact


class FrozenImageEncoder(ImageTowerModule):
    """The backbone's image tower: (N, 3, H, W) -> (N, D) L2-normalised features."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.clip.encode_image(images).float(), dim=-1)


class TunedImageEncoder(ImageTowerModule):
    """A tuner's own image tower (its adapters, tokens or merged weights inside)."""

    def __init__(self, tuned: nn.Module) -> None:
        super().__init__(tuned.model)
        object.__setattr__(self, "tuned", tuned)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.tuned.encode_images(images).float()


class MapleImageEncoder(ImageTowerModule):
    """MaPLe's image tower with its vision prompts. The prompts are coupled from the learned text
    prompts by fixed layers, so they are computed once here and enter the graph as constants.

    Mutates ``method`` (its ``net_.vision_prompts`` returns the fixed prompts): pass a copy you own.
    """

    def __init__(self, method: Any) -> None:
        super().__init__(method.backbone_.model)
        with torch.no_grad():
            prompts = [p.detach().clone() for p in method.net_.vision_prompts()]  # depth x (n, W)
        object.__setattr__(method.net_, "vision_prompts", lambda: prompts)
        object.__setattr__(self, "method", method)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.method.image_features(images).float()


class ExportedClassifier(nn.Module):
    """``images -> (logits, probabilities)``: an image encoder then a head on its features."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.encoder, self.head = encoder.eval(), head.eval()

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.head(self.encoder(images))  # (N, C)
        return logits, logits.softmax(dim=-1)


def check_exportable(method: Any) -> None:
    """Raise :class:`NotExportableError` (one line) unless ``method`` has an export rule."""
    name = method.name
    if name in NOT_FOLDABLE:
        raise NotExportableError(f"{name} cannot be exported: {NOT_FOLDABLE[name]}")
    if method.input_kind == "features" and name not in FEATURE_HEADS and name not in TEXT_TUNERS:
        raise NotExportableError(f"{name} cannot be exported: vlkit has no rule folding its learned state into a "
                                 "graph yet (add one to vlkit/apps/export/heads.py)")
    if method.input_kind == "images" and not (hasattr(method, "tuned_") or name == "maple"):
        raise NotExportableError(f"{name} cannot be exported: it changes the image tower in a way vlkit's exporter "
                                 "does not know (add a rule to vlkit/apps/export/graph.py)")


def merge_lora_into_linear(tuned: nn.Module) -> int:
    """Replace every LoRA-wrapped projection by one ``nn.Linear`` holding ``W0 + s B A``; returns how many.

    Mutates ``tuned`` (the caller passes its own copy). The merged layer is a plain Linear, so
    dynamic int8 quantisation treats it like any other projection.
    """
    from vlkit.methods.tuners.lora import LoRALinear

    swaps = [(parent, child_name, child) for parent in tuned.modules()
             for child_name, child in parent.named_children() if isinstance(child, LoRALinear)]
    for parent, child_name, lora in swaps:
        weight = (lora.base.weight + lora.delta()).detach()  # (out, in)
        linear = nn.Linear(weight.shape[1], weight.shape[0], bias=lora.base.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if lora.base.bias is not None:
                linear.bias.copy_(lora.base.bias)
        linear.requires_grad_(False)
        setattr(parent, child_name, linear)
    return len(swaps)


def classifier_module(method: Any, backbone: Any) -> ExportedClassifier:
    """The fitted ``method`` on ``backbone`` as one module (float32, CPU, eval mode).

    Mutates image-level methods (LoRA layers are merged in place): pass a copy you own.
    """
    method._check_fitted()
    check_exportable(method)
    name = method.name
    if method.input_kind == "features":
        fold = FEATURE_HEADS.get(name)
        head = fold(method) if fold is not None else LinearHead(method.logit_scale_ * method.text_weights_)
        return ExportedClassifier(FrozenImageEncoder(backbone.model), head)
    if name == "maple":
        return ExportedClassifier(MapleImageEncoder(method), LinearHead(method.scale * method.text_features_))
    if name == "lora":
        merge_lora_into_linear(method.tuned_)
    return ExportedClassifier(TunedImageEncoder(method.tuned_), LinearHead(method.logit_scale_ * method.text_weights_))
