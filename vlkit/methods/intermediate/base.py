"""The shared Method for heads on the frozen tower's intermediate layers (LST, Head2Toe).

Training inputs come from ``task.extras["layer_features"]``, which the protocol fills from
the feature store (:func:`vlkit.protocols.fewshot.with_method_images`): every view of the
training images and the validation images, (N, V, depth, 2, W) and (M, depth, 2, W). A
task built without them (a method fitted by hand on a plain Task) gets the evaluation view
encoded once here, without a store. Inference runs the frozen tower once per image
(:func:`vlkit.features.layer_features.layer_tokens`, no gradient) and reads its blocks.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from vlkit.errors import VlkitError
from vlkit.features.layer_features import layer_tokens
from vlkit.methods.base import Method
from vlkit.methods.task import Task

log = logging.getLogger("vlkit.methods.intermediate")


@dataclass
class LayerInputs:
    """Per-layer and final features of a task's training views and validation images."""

    train_layers: torch.Tensor  # (N, V, depth, 2, W)
    train_final: torch.Tensor  # (N, V, D) normalised final features
    val_layers: torch.Tensor | None  # (M, depth, 2, W)
    val_final: torch.Tensor | None  # (M, D)


def _encode(backbone: Any, images: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, D) normalised final features and (n, depth, 2, W) layer features of an image set's eval view."""
    x = torch.stack([backbone.preprocess(images.image(i)) for i in range(len(images))])  # (n, 3, H, W)
    finals, layers = zip(*(layer_tokens(backbone, x[i:i + 256]) for i in range(0, len(x), 256)))
    return F.normalize(torch.cat(finals).cpu(), dim=-1), torch.cat(layers).cpu()


def layer_inputs(task: Task, name: str) -> LayerInputs:
    """The task's layer features: from the store (``task.extras``), else encoded once here (eval view only)."""
    stored = task.extras.get("layer_features")
    if stored is not None:
        train = stored["train"]
        views = train.shape[1]
        return LayerInputs(train, task.train_features[:, :views], stored.get("val"),
                           task.val_features if stored.get("val") is not None else None)
    if task.train_images is None or task.backbone is None:
        raise VlkitError(f"{name} reads the image tower's intermediate layers: build the task with images and a "
                         "backbone (vlkit.protocols.fewshot.build_task(..., with_images=True)), or fit through "
                         "run_fewshot, which reads them from the feature store")
    log.info("%s: no stored layer features in the task; encoding the evaluation view once", name)
    final, layers = _encode(task.backbone, task.train_images)
    val_final = val_layers = None
    if task.has_val and task.val_images is not None:
        val_final, val_layers = _encode(task.backbone, task.val_images)
    return LayerInputs(layers[:, None], final[:, None], val_layers, val_final)


def view_batches(count: int, views: int, batch_size: int, generator: torch.Generator) -> list[tuple[torch.Tensor,
                                                                                                    torch.Tensor]]:
    """One epoch of (rows (B,), views (B,)) index batches: each image once, one augmented view
    (1..V-1) drawn per image when there are any, as :func:`vlkit.methods.training.feature_batches`."""
    order = torch.randperm(count, generator=generator)
    picked = torch.randint(1, views, (count,), generator=generator) if views > 1 else torch.zeros(count, dtype=torch.long)
    view = picked[order]
    return [(order[i:i + batch_size], view[i:i + batch_size]) for i in range(0, count, batch_size)]


class LayerMethod(Method):
    """Base of the intermediate-layer methods; a subclass implements :meth:`head_logits`."""

    family = "intermediate"
    input_kind = "images"
    uses_backbone = True
    needs_layer_features = True

    def head_logits(self, layers: torch.Tensor, final: torch.Tensor) -> torch.Tensor:
        """(N, depth, 2, W) layer features and (N, D) normalised final features -> (N, C) logits."""
        raise NotImplementedError

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(x), 256):
            final, layers = layer_tokens(self._backbone, x[i:i + 256])  # (n, D), (n, depth, 2, W)
            out.append(self.head_logits(layers, F.normalize(final, dim=-1)).float().cpu())
        return torch.cat(out)  # (N, C)

    def val_accuracy(self, inputs: LayerInputs, labels: torch.Tensor) -> float:
        """Accuracy of the current head on the validation features."""
        with torch.no_grad():
            pred = self.head_logits(inputs.val_layers.to(self._device), inputs.val_final.to(self._device))
        return float((pred.argmax(dim=-1).cpu() == labels).float().mean())
