"""The frozen backbone: normalised encoders, the exact text hook, fingerprint, errors."""
from __future__ import annotations

import time

import pytest
import torch
import torch.nn.functional as F

import vlkit
from vlkit.errors import VlkitError


def test_encoders_are_normalised_float32(tiny_backbone):
    texts = tiny_backbone.encode_texts(["a photo of a cat.", "a dog", "x"])
    images = tiny_backbone.encode_images(torch.randn(4, 3, 32, 32))
    for feats, n in ((texts, 3), (images, 4)):
        assert feats.dtype == torch.float32 and feats.shape == (n, tiny_backbone.embed_dim)
        assert torch.allclose(feats.norm(dim=-1), torch.ones(n), atol=1e-5)


def test_text_hook_matches_encode_texts_and_full_length_run(tiny_backbone):
    texts = ["a photo of a red car.", "blue", "a much longer prompt about a small green thing."]
    tokens = tiny_backbone.tokenize(texts)
    embeds = tiny_backbone.text.token_embedding(tokens)  # (3, 77, W)
    hooked = F.normalize(tiny_backbone.text.encode_embeddings(embeds, tokens), dim=-1)
    assert torch.allclose(hooked, tiny_backbone.encode_texts(texts), atol=1e-6)
    # the trimmed run equals the plain 77-position computation written out here
    m = tiny_backbone.model
    x = embeds + m.positional_embedding
    x = m.ln_final(m.transformer(x, attn_mask=m.attn_mask))
    full = x[torch.arange(3), tokens.argmax(-1)] @ m.text_projection
    assert torch.allclose(hooked, F.normalize(full, dim=-1), atol=1e-6)


def test_fingerprint_changes_with_weights():
    a = vlkit.load_backbone("test-tiny", device="cpu")
    b = vlkit.load_backbone("test-tiny", device="cpu")
    assert a.fingerprint == b.fingerprint  # fixed seed: same weights everywhere
    with torch.no_grad():
        b.model.visual.proj[0, 0] += 1e-3
    b._fingerprint = None
    assert a.fingerprint != b.fingerprint


def test_frozen_and_loads_fast():
    start = time.perf_counter()
    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    assert time.perf_counter() - start < 5  # generous bound; typically ~0.2 s
    assert not any(p.requires_grad for p in backbone.model.parameters())
    assert sum(p.numel() for p in backbone.model.parameters()) <= 2_000_000


def test_local_checkpoint_round_trip(tmp_path, tiny_backbone):
    from safetensors.torch import save_file

    state = {k: v.clone() for k, v in tiny_backbone.model.state_dict().items()}
    state["visual.proj"][0, 0] += 0.5
    path = tmp_path / "tiny.safetensors"
    save_file(state, str(path))
    loaded = vlkit.load_backbone("test-tiny", pretrained=str(path), device="cpu")
    assert loaded.fingerprint != tiny_backbone.fingerprint
    assert torch.equal(loaded.model.state_dict()["visual.proj"], state["visual.proj"])


@pytest.mark.parametrize("name, pretrained, message", [
    ("no-such-model", None, "unknown model 'no-such-model'"),
    ("test-tiny", "/no/such/file.pt", "checkpoint file not found"),
    ("ViT-B-32", "no-such-tag", "unknown pretrained tag"),
])
def test_bad_model_arguments(name, pretrained, message):
    with pytest.raises(VlkitError, match=message):
        vlkit.load_backbone(name, pretrained, device="cpu")


def test_missing_weights_fail_fast_offline(monkeypatch):
    from vlkit.backbones import backbone as bb

    monkeypatch.setattr(bb, "_hub_reachable", lambda timeout=3.0: False)
    start = time.perf_counter()
    with pytest.raises(VlkitError, match="--pretrained /path/to"):
        vlkit.load_backbone("RN50", "openai", device="cpu")
    assert time.perf_counter() - start < 30  # no minute of retries


def test_offline_transforms_equal_the_hand_built_ones_they_replace(tiny_backbone):
    """test-tiny's config reproduces the transforms vlkit built by hand before (bit for bit, augmented views too)."""
    import numpy as np
    from PIL import Image
    from torchvision import transforms as T

    from vlkit.backbones.offline_model import OPENAI_MEAN, OPENAI_STD

    bicubic = T.InterpolationMode.BICUBIC
    old_eval = T.Compose([T.Resize(32, interpolation=bicubic), T.CenterCrop(32), T.ToTensor(),
                          T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    old_train = T.Compose([T.RandomResizedCrop(32, scale=(0.5, 1.0), interpolation=bicubic),
                           T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(OPENAI_MEAN, OPENAI_STD)])
    rng = np.random.default_rng(0)
    for h, w in [(28, 28), (50, 30), (30, 70)]:
        image = Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
        assert torch.equal(tiny_backbone.preprocess(image), old_eval(image))
        for seed in range(3):
            torch.manual_seed(seed)
            ours = tiny_backbone.train_transform(image)
            torch.manual_seed(seed)
            assert torch.equal(ours, old_train(image))
