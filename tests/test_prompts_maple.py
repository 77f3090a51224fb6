"""MaPLe: deep prompts inserted by the surgery module match an explicit forward; frozen towers; identities."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from vlkit.methods import Method, create_method
from vlkit.protocols.scoring import method_logits
from vlkit.backbones.surgery import prompt_tokens, tower_blocks


def digest(backbone) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(backbone.model.state_dict().items()):
        h.update(key.encode() + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def explicit_maple_image(visual, images: torch.Tensor, prompts: list[torch.Tensor]) -> torch.Tensor:
    """MaPLe's modified ViT forward written out (the authors' VisionTransformer_MaPLe)."""
    n = prompts[0].shape[0]
    x = visual.conv1(images).flatten(2).transpose(1, 2)  # (B, T, W)
    cls = visual.class_embedding.expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding
    x = torch.cat([x, prompts[0].expand(x.shape[0], -1, -1)], dim=1)  # append after positions
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 0 < i < len(prompts):
            x = torch.cat([x[:, :-n], prompts[i].expand(x.shape[0], -1, -1)], dim=1)
        x = block(x)
    x = visual.ln_post(x[:, :-n])
    return x[:, 0] @ visual.proj


def no_hooks(module: torch.nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in module.modules())


def test_vision_hooks_equal_the_explicit_forward(tiny_backbone):
    visual = tiny_backbone.model.visual
    torch.manual_seed(0)
    images = torch.randn(3, 3, 32, 32)
    prompts = [torch.randn(2, visual.transformer.width) for _ in range(2)]
    with prompt_tokens(tiny_backbone.model, "image", prompts, start=-2, insert=True, normalize=True):
        hooked = tiny_backbone.model.encode_image(images)
    assert no_hooks(visual)
    assert torch.equal(hooked, explicit_maple_image(visual, images, prompts))
    assert not torch.allclose(hooked, tiny_backbone.model.encode_image(images))


def test_text_hooks_write_the_right_positions(tiny_backbone):
    tower = tiny_backbone.text
    blocks = tower_blocks(tiny_backbone.model, "text")
    tokens = tiny_backbone.tokenize(["a photo of a red.", "a photo of a green apple."])
    embeds = tower.token_embedding(tokens)
    seen = []
    handle = blocks[1].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach().clone()))
    plain = tower.encode_embeddings(embeds, tokens)
    handle.remove()
    frozen_state = seen[0][0, 1:3]  # causal: positions 1-2 do not depend on the class name
    assert torch.equal(seen[0][1, 1:3], frozen_state)
    with prompt_tokens(tiny_backbone.model, "text", [None, frozen_state], start=1):
        same = tower.encode_embeddings(embeds, tokens)
    with prompt_tokens(tiny_backbone.model, "text", [None, torch.randn(2, tower.width)], start=1):
        moved = tower.encode_embeddings(embeds, tokens)
    assert torch.equal(same, plain) and not torch.allclose(moved, plain)
    assert no_hooks(tiny_backbone.model)


def test_hooks_are_removed_after_an_error(tiny_backbone):
    visual = tiny_backbone.model.visual
    with pytest.raises(RuntimeError):
        with prompt_tokens(tiny_backbone.model, "image", [torch.zeros(2, visual.transformer.width)], start=-2,
                           insert=True, normalize=True):
            raise RuntimeError("boom")
    assert no_hooks(tiny_backbone.model)


def test_depth_one_untrained_text_side_is_the_template(colour_task, tiny_backbone):
    method = create_method("maple", epochs=0, prompt_depth=1).fit(colour_task)
    ref = tiny_backbone.encode_texts([f"a photo of a {c}." for c in colour_task.classnames])
    torch.testing.assert_close(method.text_features_, ref, rtol=0, atol=1e-6)
    assert method.fit_info_["prompt_depth"] == 1


def test_gradients_reach_only_the_prompts(colour_task, tiny_backbone):
    method = create_method("maple", epochs=0).fit(colour_task)
    assert method.net_.depth == 2  # capped at test-tiny's two layers
    method.net_.requires_grad_(True)
    images = torch.stack([tiny_backbone.train_transform(colour_task.train_images.image(i)) for i in range(4)])
    F.cross_entropy(method.train_logits(images), colour_task.train_labels[:4]).backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.model.parameters())
    grads = {n: p.grad for n, p in method.net_.named_parameters()}
    assert set(grads) == {"encoder.ctx", "text_deep.0", "proj.weight", "proj.bias",
                          "deep_proj.0.weight", "deep_proj.0.bias"}
    assert all(g is not None and g.abs().sum() > 0 for g in grads.values())


def test_training_keeps_the_encoder_and_round_trips(colour_task, colour_test, tiny_backbone, session_store,
                                                     tmp_path):
    before = digest(tiny_backbone)
    method = create_method("maple", epochs=2).fit(colour_task)
    assert digest(tiny_backbone) == before and no_hooks(tiny_backbone.model)
    logits = method_logits(method, tiny_backbone, colour_test, session_store)
    loaded = Method.load(method.save(tmp_path / "maple", tiny_backbone.fingerprint), tiny_backbone)
    assert torch.equal(method_logits(loaded, tiny_backbone, colour_test, session_store), logits)


def test_maple_needs_images(colour_task):
    from dataclasses import replace

    from vlkit.errors import VlkitError

    with pytest.raises(VlkitError, match="encodes images"):
        create_method("maple", epochs=1).fit(replace(colour_task, train_images=None))
