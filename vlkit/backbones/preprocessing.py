"""A backbone's image transforms, built from the open_clip preprocessing config its model carries.

The config (open_clip's ``PreprocessCfg``: size, interpolation, resize mode, mean/std,
fill colour) lives on the model (``model.visual.preprocess_cfg``) as open_clip sets it;
vlkit's offline models set theirs the same way. The evaluation transform is open_clip's
own builder on that config; the training augmentation is vlkit's (random resized crop +
flip, the CoOp/Tip-Adapter recipe) on the same size, interpolation and mean/std.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict
from typing import Any, Callable

import open_clip
from open_clip.transform import MaybeConvertMode, PreprocessCfg, image_transform_v2, merge_preprocess_dict
from torch import nn
from torchvision import transforms as T

from vlkit.errors import VlkitError

log = logging.getLogger("vlkit.backbone")

AUGMENT_SCALE = (0.5, 1.0)  # random resized crop area range (CoOp, Tip-Adapter)
AUGMENT_FLIP = 0.5  # horizontal flip probability
# what a published weight tag fixes about preprocessing, as create_model_and_transforms arguments
_TAG_KEYS = {"mean": "image_mean", "std": "image_std", "interpolation": "image_interpolation",
             "resize_mode": "image_resize_mode"}


def model_preprocess_cfg(model: nn.Module) -> PreprocessCfg:
    """The preprocessing config ``model`` carries, open_clip's defaults filling what it lacks.

    Sizes become ``(H, W)`` and mean/std tuples of floats, so equal configs compare and
    serialise equal.
    """
    visual = getattr(model, "visual", model)
    if not getattr(visual, "preprocess_cfg", None) and getattr(visual, "image_size", None) is None:
        raise VlkitError(
            f"{type(model).__name__} carries no preprocessing config (no visual.preprocess_cfg or image_size): "
            "set one with open_clip.set_model_preprocess_cfg(model, {'size': ..., 'mean': ..., 'std': ...})"
        )
    merged = merge_preprocess_dict(PreprocessCfg(), open_clip.get_model_preprocess_cfg(model))
    size = merged["size"]
    merged["size"] = (int(size), int(size)) if isinstance(size, int) else tuple(int(s) for s in size)
    merged["mean"] = tuple(float(m) for m in merged["mean"])
    merged["std"] = tuple(float(s) for s in merged["std"])
    return PreprocessCfg(**merged)


def published_preprocess(name: str, warn: bool = False) -> dict[str, Any]:
    """Preprocessing of ``name``'s published weights, as ``create_model_and_transforms`` arguments.

    open_clip applies a weight tag's preprocessing only when it loads that tag; random
    weights or a local checkpoint get its defaults (bicubic, shortest side, OpenAI mean/std),
    which is wrong for, e.g., SigLIP (squash, mean/std 0.5). When every published tag of
    ``name`` agrees this returns their settings; with no tags, or tags that disagree
    (ViT-L-14: OpenAI's and LAION's mean/std), it returns {} and open_clip's defaults stand
    (``warn``: say so in the log).
    """
    settings = set()
    for tag in open_clip.list_pretrained_tags_by_model(name):
        cfg = merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(name, tag))
        settings.add(json.dumps({key: cfg[key] for key in _TAG_KEYS}, sort_keys=True))
    if len(settings) != 1:
        if warn and settings:
            log.warning("the published weights of %s use %d different preprocessings; a local checkpoint "
                        "gets open_clip's default (%s)", name, len(settings), PreprocessCfg())
        return {}
    agreed = json.loads(settings.pop())
    return {_TAG_KEYS[key]: tuple(value) if isinstance(value, list) else value for key, value in agreed.items()}


def _interpolation(cfg: PreprocessCfg) -> T.InterpolationMode:
    # open_clip's rule: bilinear when asked, bicubic otherwise ("random" included)
    return T.InterpolationMode.BILINEAR if cfg.interpolation == "bilinear" else T.InterpolationMode.BICUBIC


def eval_transform(cfg: PreprocessCfg) -> Callable:
    """open_clip's own evaluation transform for ``cfg`` (PIL image -> (3, H, W) float tensor)."""
    return image_transform_v2(cfg, is_train=False)


def train_transform(cfg: PreprocessCfg) -> T.Compose:
    """The augmentation for cached views: RGB, random resized crop (area 0.5-1) and flip on ``cfg``.

    The crop is resized to the config's size with its interpolation, then normalised with
    its mean/std. Random draws come from torch's global generator (the store seeds it per
    image and view).
    """
    return T.Compose([
        MaybeConvertMode(cfg.mode),
        T.RandomResizedCrop(cfg.size, scale=AUGMENT_SCALE, interpolation=_interpolation(cfg)),
        T.RandomHorizontalFlip(AUGMENT_FLIP),
        T.ToTensor(),
        T.Normalize(cfg.mean, cfg.std),
    ])


def transform_signature(cfg: PreprocessCfg, train: bool) -> str:
    """A string that changes when the transform changes (config, and for ``train`` the augmentation)."""
    spec: dict[str, Any] = {"preprocess": asdict(cfg)}
    if train:
        spec["augment"] = {"random_resized_crop_scale": AUGMENT_SCALE, "hflip": AUGMENT_FLIP}
    return json.dumps(spec, sort_keys=True)
