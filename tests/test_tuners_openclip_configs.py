"""Every tuner on open_clip's own ViT-B-32 config (random weights; both towers). Slow on CPU."""
from __future__ import annotations

import open_clip
import pytest
import torch

from tuner_helpers import IDENTITY_CONFIGS, TRAINABLE_CONFIGS, method_name
from vlkit.backbones import Backbone
from vlkit.methods import create_method
from vlkit.methods.tuners.model import TunedCLIP

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vit_b32() -> Backbone:
    torch.manual_seed(0)
    model = open_clip.create_model("ViT-B-32", pretrained=None)
    return Backbone(model, "ViT-B-32", None, open_clip.get_tokenizer("ViT-B-32"), torch.device("cpu"), None)


@pytest.mark.parametrize("key", list(IDENTITY_CONFIGS))
def test_vit_b32_identity_and_gradients(key, vit_b32):
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    prompts = ["a photo of a dog.", "a cat"]
    torch.manual_seed(0)
    method = create_method(method_name(key), **IDENTITY_CONFIGS[key])
    tuned, plain = method.build(vit_b32), TunedCLIP(vit_b32, method.towers)
    with torch.no_grad():
        if "image" in method.towers:
            assert torch.equal(tuned.encode_images(images), plain.encode_images(images))
            torch.testing.assert_close(tuned.encode_images(images), vit_b32.encode_images(images), atol=2e-5, rtol=1e-4)
        if "text" in method.towers:
            tokens = vit_b32.tokenize(prompts)
            assert torch.equal(tuned.encode_tokens(tokens), plain.encode_tokens(tokens))
            torch.testing.assert_close(tuned.encode_tokens(tokens), vit_b32.encode_texts(prompts), atol=2e-5, rtol=1e-4)
    torch.manual_seed(0)
    tuned = create_method(method_name(key), **TRAINABLE_CONFIGS[key]).build(vit_b32)
    loss = torch.zeros(())
    if "image" in method.towers:
        loss = loss + tuned.encode_images(images).pow(3).sum()
    if "text" in method.towers:
        loss = loss + tuned.encode_tokens(vit_b32.tokenize(prompts)).pow(3).sum()
    loss.backward()
    assert all(p.grad is None for p in vit_b32.model.parameters())
    assert {n for n, p in tuned.model.named_parameters() if p.grad is not None} == set(tuned.parameters_to_train())
