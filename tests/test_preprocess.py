"""The backbone's transforms come from its open_clip preprocessing config.

Three open_clip models whose published weights preprocess differently, built with random
weights and small towers (the architecture's image size and the real preprocessing
config of the weights, read from open_clip's pretrained table; no network):
``preprocess`` equals open_clip's own transform for those weights and an independent
PIL/numpy reference, and ``train_transform`` uses the same size, interpolation, mean/std.
"""
from __future__ import annotations

import logging

import numpy as np
import open_clip
import pytest
import torch
from open_clip.factory import _MODEL_CONFIGS
from open_clip.tokenizer import SimpleTokenizer
from PIL import Image
from torchvision.transforms import RandomResizedCrop

import vlkit
from vlkit.backbones.preprocessing import published_preprocess

# (model, tag whose preprocessing its weights use, the architecture's image size)
PUBLISHED = [
    ("ViT-B-32", "openai", 224),  # bicubic, shorter side + centre crop, OpenAI mean/std
    ("ViT-B-16-SigLIP", "webli", 224),  # squash, mean/std 0.5
    ("MobileCLIP2-S0", "dfndr2b", 256),  # bilinear, shorter side + centre crop, mean 0 / std 1
]
RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}


def small_config(image_size: int) -> dict:
    """A 2-layer CLIP at the architecture's image size with open_clip's default tokenizer."""
    return {"embed_dim": 32,
            "vision_cfg": {"image_size": image_size, "layers": 1, "width": 32, "head_width": 16, "patch_size": 32},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


@pytest.fixture(scope="module")
def small_towers():
    """Small towers under the real model names (their preprocessing comes from the tags).

    The tokenizer is open_clip's default for every name (SigLIP's own downloads its
    vocabulary). Yields the three backbones loaded through vlkit, by name.
    """
    tokenizer = SimpleTokenizer()
    with pytest.MonkeyPatch.context() as patch:
        for name, _, size in PUBLISHED:
            patch.setitem(_MODEL_CONFIGS, name, small_config(size))
        patch.setattr(open_clip, "get_tokenizer", lambda name, **kwargs: tokenizer)
        yield {name: vlkit.load_backbone(name, device="cpu") for name, _, _ in PUBLISHED}  # random weights


def tag_preprocess(name: str, tag: str) -> dict:
    """The preprocessing open_clip's pretrained table records for ``name``/``tag``."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    return {key: cfg[key] for key in ("mean", "std", "interpolation", "resize_mode")}


def open_clip_preprocess(name: str, tag: str):
    """open_clip's own evaluation transform for the weights ``name``/``tag`` (random weights, no download)."""
    pp = tag_preprocess(name, tag)
    _, _, preprocess = open_clip.create_model_and_transforms(
        name, pretrained=None, image_mean=pp["mean"], image_std=pp["std"],
        image_interpolation=pp["interpolation"], image_resize_mode=pp["resize_mode"])
    return preprocess


def sample_images() -> list[Image.Image]:
    """Non-square images: RGB both ways round, greyscale, and RGBA with varying transparency."""
    rng = np.random.default_rng(0)

    def smooth(h: int, w: int, channels: int) -> np.ndarray:
        coarse = rng.integers(0, 256, (h // 20 + 1, w // 20 + 1, channels))
        return np.kron(coarse, np.ones((20, 20, 1)))[:h, :w].astype(np.uint8)  # (h, w, channels)

    return [Image.fromarray(smooth(200, 300, 3)), Image.fromarray(smooth(400, 120, 3)),
            Image.fromarray(smooth(200, 300, 1)[..., 0], mode="L"), Image.fromarray(smooth(400, 120, 4), mode="RGBA")]


def reference_eval(image: Image.Image, size: int, pp: dict) -> torch.Tensor:
    """open_clip's evaluation recipe written out in PIL/numpy: resize (in the image's mode), crop, RGB, normalise."""
    resample = RESAMPLE[pp["interpolation"]]
    w, h = image.size
    if pp["resize_mode"] == "squash":
        image = image.resize((size, size), resample)
    else:  # shorter side to ``size`` (longer side truncated), then the centre crop
        new_w, new_h = (size, int(size * h / w)) if w <= h else (int(size * w / h), size)
        image = image.resize((new_w, new_h), resample)
        left, top = int(round((new_w - size) / 2)), int(round((new_h - size) / 2))
        image = image.crop((left, top, left + size, top + size))
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (S, S, 3)
    mean, std = np.array(pp["mean"], np.float32), np.array(pp["std"], np.float32)
    return torch.from_numpy((pixels - mean) / std).permute(2, 0, 1)  # (3, S, S)


@pytest.mark.parametrize("name, tag, size", PUBLISHED)
def test_preprocess_is_the_weights_own(small_towers, name, tag, size):
    backbone = small_towers[name]  # random weights: the published preprocessing still
    pp = tag_preprocess(name, tag)
    cfg = backbone.preprocess_cfg
    assert (cfg.size, cfg.interpolation, cfg.resize_mode) == ((size, size), pp["interpolation"], pp["resize_mode"])
    assert np.allclose(cfg.mean, pp["mean"]) and np.allclose(cfg.std, pp["std"])
    theirs = open_clip_preprocess(name, tag)
    for image in sample_images():
        ours = backbone.preprocess(image)
        assert ours.shape == (3, size, size)
        assert torch.equal(ours, theirs(image)), (name, image.mode, image.size)
        torch.testing.assert_close(ours, reference_eval(image, size, pp), atol=1e-5, rtol=0)


def test_the_three_preprocessings_differ(small_towers):
    """The three configs give three different tensors for the same image (a shared transform would not)."""
    image = sample_images()[0]
    outs = [small_towers[name].preprocess(image) for name, _, _ in PUBLISHED[:2]]
    assert not torch.allclose(outs[0], outs[1], atol=1e-2)  # squash vs centre crop, other mean/std
    mobile = small_towers["MobileCLIP2-S0"].preprocess(image)
    assert mobile.shape == (3, 256, 256) and float(mobile.min()) >= 0.0  # mean 0 / std 1: plain [0, 1] pixels


@pytest.mark.parametrize("name, tag, size", PUBLISHED)
def test_train_transform_uses_the_config(small_towers, name, tag, size):
    """Seeded augmented view = the same crop and flip done by hand with the config's size, interpolation, mean/std."""
    backbone = small_towers[name]
    pp = tag_preprocess(name, tag)
    image = sample_images()[0]
    for seed in range(3):
        torch.manual_seed(seed)
        ours = backbone.train_transform(image)
        torch.manual_seed(seed)  # replay torchvision's draws: crop box, then the flip
        top, left, h, w = RandomResizedCrop.get_params(image, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        view = image.crop((left, top, left + w, top + h)).resize((size, size), RESAMPLE[pp["interpolation"]])
        if torch.rand(1) < 0.5:
            view = view.transpose(Image.FLIP_LEFT_RIGHT)
        expected = (torch.from_numpy(np.asarray(view, np.float32) / 255.0).permute(2, 0, 1)
                    - torch.tensor(pp["mean"]).view(3, 1, 1)) / torch.tensor(pp["std"]).view(3, 1, 1)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=0)


def test_local_checkpoint_gets_the_published_preprocessing(small_towers, tmp_path):
    """open_clip gives a local SigLIP checkpoint OpenAI's shortest-side default; vlkit gives it SigLIP's squash."""
    from safetensors.torch import save_file

    model = open_clip.create_model("ViT-B-16-SigLIP", pretrained=None)
    assert open_clip.get_model_preprocess_cfg(model)["resize_mode"] == "shortest"  # open_clip alone
    path = tmp_path / "siglip.safetensors"
    save_file(model.state_dict(), str(path))
    backbone = vlkit.load_backbone("ViT-B-16-SigLIP", str(path), device="cpu")
    assert backbone.preprocess_cfg.resize_mode == "squash" and backbone.preprocess_cfg.mean == (0.5, 0.5, 0.5)
    assert torch.equal(backbone.model.state_dict()["visual.proj"], model.state_dict()["visual.proj"])


def test_published_preprocess_only_when_the_tags_agree(caplog):
    assert published_preprocess("ViT-B-16-SigLIP") == {"image_mean": (0.5, 0.5, 0.5), "image_std": (0.5, 0.5, 0.5),
                                                       "image_interpolation": "bicubic", "image_resize_mode": "squash"}
    with caplog.at_level(logging.WARNING, logger="vlkit.backbone"):
        assert published_preprocess("ViT-L-14", warn=True) == {}  # OpenAI's and LAION's mean/std
    assert "ViT-L-14" in caplog.text and "open_clip's default" in caplog.text
    assert published_preprocess("hf-hub:someone/some-model") == {}  # the hub config brings its own


def test_offline_models_keep_their_transforms(tiny_backbone):
    """test-tiny and vlkit-mini: shorter side (bicubic) + centre crop at 32 px, as before the config."""
    from vlkit.backbones.mini import MINI_PREPROCESS
    from vlkit.backbones.tiny import TINY_PREPROCESS

    assert tiny_backbone.preprocess_cfg == TINY_PREPROCESS
    assert (MINI_PREPROCESS.size, MINI_PREPROCESS.mean, MINI_PREPROCESS.interpolation,
            MINI_PREPROCESS.resize_mode) == ((32, 32), (0.5, 0.5, 0.5), "bicubic", "shortest")
    image = sample_images()[1]
    pp = {"mean": TINY_PREPROCESS.mean, "std": TINY_PREPROCESS.std, "interpolation": "bicubic",
          "resize_mode": "shortest"}
    torch.testing.assert_close(tiny_backbone.preprocess(image), reference_eval(image, 32, pp), atol=1e-5, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("name, tag, size", [PUBLISHED[0], PUBLISHED[2]])
def test_full_size_models_match_open_clip(name, tag, size):
    """The same check on the full-size architectures (random weights; their tokenizers need no network)."""
    backbone = vlkit.load_backbone(name, device="cpu")
    theirs = open_clip_preprocess(name, tag)
    for image in sample_images():
        assert torch.equal(backbone.preprocess(image), theirs(image))


def test_a_model_without_a_config_is_refused(tiny_backbone):
    from torch import nn

    from vlkit.backbones import Backbone
    from vlkit.errors import VlkitError

    model = tiny_backbone.model
    bare = nn.Module()
    bare.visual = nn.Identity()  # no preprocess_cfg, no image_size
    bare.logit_scale = model.logit_scale
    with pytest.raises(VlkitError, match="set_model_preprocess_cfg"):
        Backbone(bare, "bare", None, tiny_backbone.tokenizer, torch.device("cpu"), None)
