"""The prompted text encoder: layouts, identities with hand-written prompts, the fast path."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlkit.errors import ShapeError, VlkitError
from vlkit.prompts.encoder import PromptedTextEncoder
from vlkit.prompts.layout import build_layout

NAMES = ["red", "green apple", "blue_whale", "yellow"]


def encoder(backbone, **kw) -> PromptedTextEncoder:
    return PromptedTextEncoder(backbone, NAMES, generator=torch.Generator().manual_seed(0), **kw)


def hook_encode(backbone, texts: list[str]) -> torch.Tensor:
    """Hand-written prompts through the same hook (no learned vectors)."""
    tokens = backbone.tokenize(texts)
    return backbone.text.encode_embeddings(backbone.text.token_embedding(tokens), tokens)


@pytest.mark.parametrize("position, slots", [("end", [1, 2, 3, 4]), ("middle", [1, 2, 5, 6]), ("front", [3, 4, 5, 6])])
def test_layout_positions(tiny_backbone, position, slots):
    enc = encoder(tiny_backbone, n_ctx=4, position=position)
    assert enc.ctx_index[1].tolist() == slots  # "green apple" is two tokens
    x_id = int(tiny_backbone.tokenize(["X"])[0, 1])
    assert (enc.tokens.gather(1, enc.ctx_index) == x_id).all()
    assert enc.layout.texts[2].count("blue whale") == 1  # "_" becomes a space, as CoOp


def test_init_phrase_reproduces_the_template_exactly(tiny_backbone):
    enc = encoder(tiny_backbone, init="a photo of a")
    assert enc.n_ctx == 4 and enc.layout.texts[0] == "a photo of a red."
    texts = [f"a photo of a {n.replace('_', ' ')}." for n in NAMES]
    assert torch.equal(enc.encode(), hook_encode(tiny_backbone, texts))  # same embeddings, same tower call
    full = tiny_backbone.model.encode_text(tiny_backbone.tokenize(texts))  # all 77 positions
    torch.testing.assert_close(enc.encode(), full, rtol=0, atol=1e-5)  # trimming: exact up to rounding


def test_partial_init_keeps_the_rest_of_the_phrase(tiny_backbone):
    enc = encoder(tiny_backbone, n_ctx=2, init="a photo of a")
    assert enc.n_ctx == 2 and enc.layout.texts[1] == "a photo of a green apple."
    assert torch.equal(enc.encode(), hook_encode(tiny_backbone, enc.layout.texts))


def test_context_shapes_and_groups(tiny_backbone):
    enc = encoder(tiny_backbone, n_ctx=4)
    groups = torch.randn(3, 4, enc.width) * 0.02
    out = enc.encode(groups)
    assert out.shape == (3, len(NAMES), tiny_backbone.embed_dim)
    assert torch.equal(out[1], enc.encode(groups[1]))  # a group is the same as encoding it alone
    csc = encoder(tiny_backbone, n_ctx=4, class_specific=True)
    assert csc.ctx.shape == (len(NAMES), 4, csc.width)
    assert csc.encode(torch.randn(2, len(NAMES), 4, csc.width)).shape == (2, len(NAMES), tiny_backbone.embed_dim)
    with pytest.raises(ShapeError, match="context must be"):
        enc.encode(torch.randn(5, enc.width))


def test_random_init_is_seeded(tiny_backbone):
    a, b = encoder(tiny_backbone, n_ctx=4), encoder(tiny_backbone, n_ctx=4)
    assert torch.equal(a.ctx, b.ctx) and 0.01 < float(a.ctx.detach().std()) < 0.03


def float64_copy(backbone):
    """The backbone's model in float64 (a copy): exactness checks without float32 rounding."""
    import copy

    from vlkit.backbones.text_tower import text_tower_of

    other = copy.copy(backbone)
    other.model = copy.deepcopy(backbone.model).double()
    other.text = text_tower_of(other.model)
    return other


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_shared_prefix_path_matches_the_plain_path_with_gradients(tiny_backbone, dtype):
    backbone = tiny_backbone if dtype == torch.float32 else float64_copy(tiny_backbone)
    enc = encoder(backbone, n_ctx=4)
    enc.base = enc.base.to(dtype)
    assert enc.fast is not None and enc.layout.shared_prefix == 5  # [SOS] + 4 slots
    groups = (torch.randn(3, 4, enc.width, generator=torch.Generator().manual_seed(1), dtype=dtype) * 0.02)
    groups.requires_grad_()
    plain, fast = enc.encode(groups), enc.encode(groups, fast=True)
    (g_plain,) = torch.autograd.grad(plain.square().sum(), groups)
    (g_fast,) = torch.autograd.grad(fast.square().sum(), groups)
    tol = 1e-12 if dtype == torch.float64 else 1e-6  # exact in real arithmetic; float32 differs by rounding
    torch.testing.assert_close(fast, plain, rtol=0, atol=tol * float(plain.detach().abs().max()))
    torch.testing.assert_close(g_fast, g_plain, rtol=0, atol=tol * float(g_plain.abs().max()))


def test_no_fast_path_where_the_prefix_is_not_shared(tiny_backbone):
    assert encoder(tiny_backbone, n_ctx=4, position="front").fast is None
    assert encoder(tiny_backbone, n_ctx=4, class_specific=True).fast is None


def test_layout_errors(tiny_backbone):
    tok, length = tiny_backbone.tokenize, tiny_backbone.text.context_length
    with pytest.raises(VlkitError, match="position"):
        build_layout(tok, 0, length, NAMES, 4, position="left")
    with pytest.raises(VlkitError, match="has 4 tokens"):
        build_layout(tok, 0, length, NAMES, 6, init="a photo of a")
    with pytest.raises(VlkitError, match="does not fit"):
        build_layout(tok, 0, length, ["word " * 70], 16)
    with pytest.raises(VlkitError, match="init phrase places"):
        build_layout(tok, 0, length, NAMES, 2, init="a photo of a", position="front")


def test_features_normalise_like_zero_shot(tiny_backbone):
    enc = encoder(tiny_backbone, init="a photo of a")
    ours = F.normalize(enc.encode(), dim=-1)
    ref = tiny_backbone.encode_texts([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-6)
