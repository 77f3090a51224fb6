"""Must-show: every tuner starts as the frozen model, trains only its own tensors, saves only them."""
from __future__ import annotations

import hashlib

import pytest
import torch
from safetensors.torch import load_file

from tuner_helpers import IDENTITY_CONFIGS, TRAINABLE_CONFIGS, bert_text_backbone, method_name
from vlkit.methods import create_method
from vlkit.protocols.fewshot import build_task
from vlkit.protocols.scoring import method_logits
from vlkit.methods.tuners.model import TunedCLIP

PROMPTS = ["a photo of a red square.", "blue", "a rather longer prompt about a green thing in a field."]


@pytest.fixture(scope="module")
def bert_backbone():
    return bert_text_backbone()


@pytest.fixture(params=["tiny", "bert"])
def backbone(request, tiny_backbone, bert_backbone):
    return tiny_backbone if request.param == "tiny" else bert_backbone


def digest(backbone) -> str:
    h = hashlib.sha256()
    for key, t in sorted(backbone.model.state_dict().items()):
        h.update(key.encode() + t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def make(key: str, configs: dict, **extra):
    torch.manual_seed(0)
    return create_method(method_name(key), **configs[key], **extra)


@pytest.mark.parametrize("key", list(IDENTITY_CONFIGS))
def test_identity_at_initialisation(key, backbone):
    """Exact against the untuned (split-attention) copy; float tolerance against the backbone."""
    method = make(key, IDENTITY_CONFIGS)
    tuned, plain = method.build(backbone), TunedCLIP(backbone, method.towers)
    images = torch.randn(3, 3, backbone.image_size, backbone.image_size, generator=torch.Generator().manual_seed(1))
    tokens = backbone.tokenize(PROMPTS)
    with torch.no_grad():
        if "image" in method.towers:
            got = tuned.encode_images(images)
            assert torch.equal(got, plain.encode_images(images))
            torch.testing.assert_close(got, backbone.encode_images(images), atol=2e-5, rtol=1e-4)
        if "text" in method.towers:
            got = tuned.encode_tokens(tokens)
            assert torch.equal(got, plain.encode_tokens(tokens))
            torch.testing.assert_close(got, backbone.encode_texts(PROMPTS), atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("key", list(TRAINABLE_CONFIGS))
def test_only_tuner_parameters_get_gradients(key, backbone):
    method = make(key, TRAINABLE_CONFIGS)
    before = digest(backbone)
    tuned = method.build(backbone)
    own = tuned.parameters_to_train()
    assert own, "a tuner trains something"
    frozen = {p.data_ptr() for p in backbone.model.parameters()}
    assert not any(p.data_ptr() in frozen for p in own.values()), "a trained tensor shares memory with the backbone"
    loss = torch.zeros(())
    if "image" in method.towers:
        loss = loss + tuned.encode_images(torch.randn(2, 3, backbone.image_size, backbone.image_size)).pow(3).sum()
    if "text" in method.towers:
        loss = loss + tuned.encode_tokens(backbone.tokenize(PROMPTS)).pow(3).sum()
    loss.backward()
    assert all(p.grad is None for p in backbone.model.parameters())
    graded = {n for n, p in tuned.model.named_parameters() if p.grad is not None}
    assert graded == set(own)
    assert digest(backbone) == before


@pytest.fixture(scope="module")
def bert_task(bert_backbone, colour_pool, session_store):
    return build_task(bert_backbone, colour_pool, shots=2, seed=0, store=session_store, views=1, with_images=True)


@pytest.mark.parametrize("key", list(TRAINABLE_CONFIGS))
def test_artifact_holds_only_the_tuner(key, bert_backbone, bert_task, colour_test, session_store, tmp_path):
    before = digest(bert_backbone)
    method = make(key, TRAINABLE_CONFIGS, iters_per_shot=1, val_checks=1, batch_size=4).fit(bert_task)
    out = method.save(tmp_path / "artifact", backbone_fingerprint=bert_backbone.fingerprint)
    saved = load_file(str(out / "state.safetensors"))
    assert set(saved) == set(method.tuned_.parameters_to_train())
    assert sum(t.numel() for t in saved.values()) == method.trainable_parameters
    assert digest(bert_backbone) == before
    loaded = type(method).load(out, bert_backbone)
    logits = method_logits(method, bert_backbone, colour_test, session_store)
    assert torch.equal(method_logits(loaded, bert_backbone, colour_test, session_store), logits)


def test_lora_merge_matches_unmerged(colour_task, colour_test, tiny_backbone, session_store):
    before = digest(tiny_backbone)
    torch.manual_seed(0)
    method = create_method("lora", iters_per_shot=1, val_checks=1, batch_size=8, merge=False).fit(colour_task)
    with torch.no_grad():
        for layer in method.lora_layers():
            layer.lora_B.normal_(0, 0.5)  # make the update large enough to matter
    method.unmerge()
    unmerged = method_logits(method, tiny_backbone, colour_test, session_store)
    method.merge()
    assert all(layer.merged_weight is not None for layer in method.lora_layers())
    merged = method_logits(method, tiny_backbone, colour_test, session_store)
    zero_shot = create_method("zero-shot").fit(colour_task)
    assert not torch.allclose(unmerged, method_logits(zero_shot, tiny_backbone, colour_test, session_store), atol=1e-2)
    torch.testing.assert_close(merged, unmerged, atol=1e-4, rtol=1e-4)
    method.unmerge()
    assert torch.equal(method_logits(method, tiny_backbone, colour_test, session_store), unmerged)
    assert digest(tiny_backbone) == before
