"""The injection mechanism's details: masks with prefixes, VPT token bookkeeping, dropout, errors."""
from __future__ import annotations

import pytest
import torch
from open_clip.transformer import Transformer

from tuner_helpers import bert_text_backbone
from vlkit.errors import VlkitError
from vlkit.methods import create_method
from vlkit.backbones.attention_views import SplitAttention
from vlkit.backbones.surgery import shared_copy, split_tower_attention
from vlkit.methods.tuners.model import TunedCLIP
from vlkit.methods.tuners.wrappers import TunerDropout


@pytest.fixture(scope="module")
def bert_backbone():
    return bert_text_backbone()


@pytest.mark.parametrize("which", ["tiny", "bert"])
def test_prefix_respects_padding(which, tiny_backbone, bert_backbone):
    """A prompt's features do not depend on what else is in the (padded) batch."""
    backbone = tiny_backbone if which == "tiny" else bert_backbone
    torch.manual_seed(0)
    tuned = create_method("prefix-tuning", length=3, init="random").build(backbone)
    with torch.no_grad():
        alone = tuned.encode_tokens(backbone.tokenize(["a cat"]))
        batched = tuned.encode_tokens(backbone.tokenize(["a cat", "a much longer prompt about a small grey cat"]))
        plain = TunedCLIP(backbone, ("text",)).encode_tokens(backbone.tokenize(["a cat"]))
    torch.testing.assert_close(batched[:1], alone, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(alone, plain, atol=1e-4), "a non-empty prefix changes the features"


def test_prefix_starts_from_real_word_activations(tiny_backbone, colour_task):
    torch.manual_seed(0)
    method = create_method("prefix-tuning", length=4, iters_per_shot=1, val_checks=1, batch_size=8)
    method._init_tokens = tiny_backbone.tokenize(["a photo of a ."])
    tuned = method.build(tiny_backbone)
    attention = tuned.model.get_submodule(tuned.blocks["text"][0].attention)
    attention.prefix, saved = None, attention.prefix
    attention.recording = []
    with torch.no_grad():
        tuned.encode_tokens(method._init_tokens)
    keys, values = attention.recording[0]
    assert torch.equal(saved.key, keys[0, :4]) and torch.equal(saved.value, values[0, :4])


def test_vpt_keeps_the_pooled_token_and_trains_prompts(tiny_backbone):
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    for name, layers in (("vpt-shallow", 1), ("vpt-deep", 2)):
        tuned = create_method(name, tokens=5).build(tiny_backbone)
        prompts = tuned.parameters_to_train()
        assert [tuple(p.shape) for p in prompts.values()] == [(layers, 5, 32)]
        with torch.no_grad():
            feats = tuned.encode_images(images)
        assert feats.shape == (2, tiny_backbone.embed_dim)
        assert not torch.allclose(feats, tiny_backbone.encode_images(images), atol=1e-4)


def test_frozen_dropout_stays_off_while_tuning(bert_backbone):
    tuned = create_method("lora", tower="text").build(bert_backbone)
    tuned.tuning(True)
    drops = [m for m in tuned.model.modules() if isinstance(m, torch.nn.Dropout)]
    assert any(isinstance(m, TunerDropout) and m.training for m in drops)
    assert all(not m.training for m in drops if not isinstance(m, TunerDropout)), "BERT's own dropout must stay off"
    tuned.tuning(False)
    assert not any(m.training for m in tuned.model.modules())


def test_open_clip_custom_attention_block_is_supported():
    """open_clip's custom block (fused in_proj + qk-norm) splits into the same roles, exactly."""
    torch.manual_seed(0)
    tower = Transformer(width=32, layers=2, heads=2, qk_norm=True)
    holder = torch.nn.Module()
    holder.visual = torch.nn.Module()
    holder.visual.transformer = tower
    copy = shared_copy(holder)
    blocks = split_tower_attention(copy, "image")
    assert isinstance(copy.get_submodule(blocks[0].attention), SplitAttention)
    x = torch.randn(3, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(copy.visual.transformer(x), tower(x), atol=1e-5, rtol=1e-5)


def test_user_errors_are_clear():
    with pytest.raises(VlkitError, match="text tower"):
        create_method("prefix-tuning", tower="image")
    with pytest.raises(VlkitError, match="image tower"):
        create_method("vpt-deep", tower="both")
    with pytest.raises(VlkitError, match="targets"):
        create_method("lora", targets=["q", "query"])
    with pytest.raises(VlkitError, match="tower must be"):
        create_method("bitfit", tower="visual")


def test_text_only_tuner_trains_from_cached_features(colour_task, colour_test, tiny_backbone, session_store):
    torch.manual_seed(0)
    method = create_method("lora", tower="text", iters_per_shot=2, val_checks=2, batch_size=8).fit(colour_task)
    assert method.input_kind == "features"
    from vlkit.protocols.scoring import method_logits

    logits = method_logits(method, tiny_backbone, colour_test, session_store)
    assert logits.shape == (len(colour_test), colour_task.num_classes)
    assert all(name.startswith("transformer.") for name in method.state())  # CLIP's text tower only


def test_layer_selection(tiny_backbone):
    all_layers = create_method("lora", tower="image").build(tiny_backbone).parameters_to_train()
    last = create_method("lora", tower="image", layers=[-1]).build(tiny_backbone).parameters_to_train()
    assert len(last) == len(all_layers) // 2 and all(".resblocks.1." in n for n in last)
    with pytest.raises(VlkitError, match="out of range"):
        create_method("lora", tower="image", layers=[5]).build(tiny_backbone)


def test_untrained_tuner_is_kept_when_no_chunk_beats_it(colour_task, monkeypatch):
    """Selection on validation includes the identity start (the shared loop's ``keep_initial``):
    a run whose every chunk scores below the start falls back to it."""
    import vlkit.methods.tuners.base as base

    real_train = base.train

    def hurting(params, loss_fn, batches, cfg, val_score=None, *args, **kwargs):
        assert cfg.keep_initial
        scores = iter([0.5] + [0.0] * 100)  # the start scores 0.5, every trained chunk 0
        return real_train(params, loss_fn, batches, cfg, lambda: (val_score(), next(scores))[1], *args, **kwargs)

    monkeypatch.setattr(base, "train", hurting)
    torch.manual_seed(0)
    method = create_method("ia3", iters_per_shot=2, val_checks=2, batch_size=8, lr=0.5).fit(colour_task)
    assert method.fit_info_["best_chunk"] == -1 and method.fit_info_["initial_val"] == 0.5
    assert all(torch.equal(p, torch.ones_like(p)) for p in method.state().values())
