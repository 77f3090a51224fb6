"""The prompt machinery on a bidirectional Hugging Face text tower (vlkit-mini's MiniLM)."""
from __future__ import annotations

import pytest
import torch

from vlkit.prompts.deep import text_blocks, text_deep_prompts
from vlkit.prompts.encoder import PromptedTextEncoder

NAMES = ["T-shirt/top", "ankle boot", "bag"]


@pytest.fixture(scope="module")
def minilm_backbone():
    """vlkit-mini's architecture: pretrained MiniLM text tower, untrained image tower."""
    from vlkit.backbones.backbone import Backbone
    from vlkit.backbones.mini import MINI_MEAN, MINI_STD, build_mini_model, mini_tokenizer

    torch.manual_seed(0)
    return Backbone(build_mini_model(), "mini-arch", None, mini_tokenizer(), 32, MINI_MEAN, MINI_STD,
                    torch.device("cpu"), None)


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
    blocks, _ = text_blocks(tower)
    tokens = minilm_backbone.tokenize(["a photo of a bag."])
    embeds = tower.token_embedding(tokens)
    seen = []
    handle = blocks[1].register_forward_pre_hook(lambda m, args, kw: seen.append(args[0].detach().clone()),
                                                 with_kwargs=True)
    plain = tower.encode_embeddings(embeds, tokens)
    handle.remove()
    with text_deep_prompts(tower, [seen[0][0, 1:3]], start=1):  # layer 1 gets its own frozen state back
        same = tower.encode_embeddings(embeds, tokens)
    with text_deep_prompts(tower, [torch.zeros(2, tower.width)], start=1):
        changed = tower.encode_embeddings(embeds, tokens)
    assert torch.equal(same, plain) and not torch.allclose(changed, plain)
    assert all(not b._forward_pre_hooks for b in blocks)
