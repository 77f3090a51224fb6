"""``test-tiny``: a random-init open_clip CLIP (~1.7M parameters) for fast tests."""
from __future__ import annotations

import open_clip
import torch
from dataclasses import asdict

from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg
from open_clip.transform import PreprocessCfg
from vlkit.backbones.offline_model import OPENAI_MEAN, OPENAI_STD, OfflineModel, register_offline_model

TINY_SEED = 1234
TINY_IMAGE_SIZE = 32
# shorter side to 32 px (bicubic), centre crop, OpenAI mean/std
TINY_PREPROCESS = PreprocessCfg(size=(TINY_IMAGE_SIZE, TINY_IMAGE_SIZE), mean=OPENAI_MEAN, std=OPENAI_STD,
                                interpolation="bicubic", resize_mode="shortest")


@register_offline_model("test-tiny", "random-init ViT (2 layers, width 32) + CLIP text tower; for tests only")
def build_test_tiny() -> OfflineModel:
    """Build the tiny CLIP with weights drawn from a fixed seed (same on every machine)."""
    vision = CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=TINY_IMAGE_SIZE)
    text = CLIPTextCfg(context_length=77, vocab_size=49408, width=32, heads=2, layers=2)
    state = torch.random.get_rng_state()
    try:
        torch.manual_seed(TINY_SEED)
        model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text)
    finally:
        torch.random.set_rng_state(state)
    open_clip.set_model_preprocess_cfg(model, asdict(TINY_PREPROCESS))
    return OfflineModel(model=model, tokenizer=open_clip.get_tokenizer("ViT-B-32"))
