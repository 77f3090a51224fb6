"""The prompt machinery on a bidirectional Hugging Face text tower (vlkit-mini's MiniLM)."""
from __future__ import annotations

import pytest
import torch

from vlkit.backbones.surgery import prompt_tokens, tower_blocks
from vlkit.prompts.encoder import PromptedTextEncoder

NAMES = ["T-shirt/top", "ankle boot", "bag"]


@pytest.fixture(scope="module")
def minilm_backbone():
    """vlkit-mini's architecture: pretrained MiniLM text tower, untrained image tower."""
    from vlkit.backbones.backbone import Backbone
    from vlkit.backbones.mini import build_mini_model, mini_tokenizer

    torch.manual_seed(0)
    return Backbone(build_mini_model(), "mini-arch", None, mini_tokenizer(), torch.device("cpu"), None)


@pytest.mark.parametrize("position, slots", [("end", [1, 2, 3, 4]), ("middle", [1, 2, 8, 9]),
                                             ("front", [6, 7, 8, 9])])
def test_wordpiece_layout(minilm_backbone, position, slots):
    enc = PromptedTextEncoder(minilm_backbone, NAMES, n_ctx=4, position=position)
    assert enc.ctx_index[0].tolist() == slots  # "t - shirt / top" is five word pieces
    assert enc.fast is None  # bidirectional: no shared-prefix shortcut


def test_init_phrase_is_the_template(minilm_backbone):
    enc = PromptedTextEncoder(minilm_backbone, NAMES, init="a photo of a")
    ref = minilm_backbone.model.encode_text(minilm_backbone.tokenize([f"a photo of a {n}." for n in NAMES]))
    torch.testing.assert_close(enc.encode(), ref, rtol=0, atol=1e-5)


def test_deep_text_prompts_on_bert_layers(minilm_backbone):
    tower = minilm_backbone.text
    blocks = tower_blocks(minilm_backbone.model, "text")
    tokens = minilm_backbone.tokenize(["a photo of a bag."])
    embeds = tower.token_embedding(tokens)
    seen = []
    handle = blocks[1].register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].detach().clone()),
                                                 with_kwargs=True)
    plain = tower.encode_embeddings(embeds, tokens)
    handle.remove()
    own_state = [None, seen[0][0, 1:3]]  # layer 1 gets its own frozen state back
    with prompt_tokens(minilm_backbone.model, "text", own_state, start=1):
        same = tower.encode_embeddings(embeds, tokens)
    with prompt_tokens(minilm_backbone.model, "text", [None, torch.zeros(2, tower.width)], start=1):
        changed = tower.encode_embeddings(embeds, tokens)
    assert torch.equal(same, plain) and not torch.allclose(changed, plain)
    assert all(not b._forward_pre_hooks for b in blocks)


def test_a_large_batch_runs_per_length_and_equals_each_prompt_alone(minilm_backbone, monkeypatch):
    """From BUCKET_FROM prompts on, sequences of different lengths run in one pass per length; each row must
    still equal that prompt encoded on its own (no padding at all)."""
    tower = minilm_backbone.text
    names = ["bag", "ankle boot", "T-shirt/top", "small red bag", "bag in the corner"]
    tokens = minilm_backbone.tokenize([f"a photo of a {name}." for name in names] * 14)  # (70, L)
    lengths = (tokens != tower.pad_id).sum(1)
    assert len(tokens) >= tower.BUCKET_FROM and len(lengths.unique()) == 5
    embeds = tower.token_embedding(tokens) + 0.01 * torch.randn(len(tokens), tokens.shape[1], tower.width)
    passes = []
    plain = type(tower)._encode
    monkeypatch.setattr(type(tower), "_encode", lambda self, e, m, n: passes.append((len(e), n)) or plain(self, e, m, n))
    with torch.no_grad():
        batched = tower.encode_embeddings(embeds, tokens)  # (70, D)
        assert sorted(passes) == [(14, n) for n in sorted(lengths.unique().tolist())]
        alone = torch.cat([tower.encode_embeddings(embeds[i:i + 1], tokens[i:i + 1]) for i in range(len(tokens))])
    torch.testing.assert_close(batched, alone, rtol=0, atol=1e-5)
