"""DAPrompt against independent references: prompt text, init identity, the loss, gradients."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlkit.errors import VlkitError
from vlkit.methods import Method, create_method

NAMES = ["red", "green", "blue", "yellow"]


@pytest.fixture(scope="module")
def untrained(colour_adapt_task):
    """Random-init DAPrompt, no training (the reference's initial state)."""
    return create_method("daprompt", epochs=0).fit(colour_adapt_task)


def test_prompts_end_with_the_fixed_domain_text(untrained, colour_adapt_task):
    source, target = untrained.prompt_texts
    assert untrained.domains_ == ["photo", "noisy"]
    for texts, domain in ((source, "photo"), (target, "noisy")):
        assert texts == [" ".join(["X"] * 32) + f" {name}, a {domain} image." for name in NAMES]
    net = untrained.net_
    assert net.agnostic.shape == (16, 32) and net.specific.shape == (2, 16, 32)  # M1 = M2 = 16, W = 32
    assert untrained.trainable_parameters == 48 * 32
    assert 0.01 < float(net.specific.std()) < 0.03  # N(0, 0.02) as the reference


def test_initialised_contexts_give_the_hand_written_prompt(colour_adapt_task, colour_test, tiny_backbone,
                                                           session_store):
    method = create_method("daprompt", epochs=0, ctx_init="a photo", dmx_init="of a").fit(colour_adapt_task)
    x = session_store.image_features(tiny_backbone, colour_test)  # (N, D)
    for domain, word in ((0, "photo"), (1, "noisy")):
        text = tiny_backbone.encode_texts([f"a photo of a {n}, a {word} image." for n in NAMES])  # (C, D)
        ref = tiny_backbone.logit_scale * F.normalize(x, dim=-1) @ text.T
        with torch.no_grad():
            ours = method.domain_logits(F.normalize(x, dim=-1), domain, fast=False)
        torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
        if domain == 1:  # prediction uses the target-domain prompts
            torch.testing.assert_close(method.logits(x), ref, rtol=0, atol=1e-4)


def reference_text(method, backbone, domain: int) -> torch.Tensor:
    """Text features built by hand: placeholder prompt, context spliced in at slots 1..32."""
    word = method.domains_[domain]
    tokens = backbone.tokenize([" ".join(["X"] * 32) + f" {n}, a {word} image." for n in NAMES])  # (C, L)
    embeds = backbone.text.token_embedding(tokens).clone()  # (C, L, W)
    ctx = torch.cat([method.net_.agnostic, method.net_.specific[domain]])  # (32, W)
    embeds[:, 1:33] = ctx
    return F.normalize(backbone.text.encode_embeddings(embeds, tokens), dim=-1)  # (C, D)


def plain_ce(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B,) -log softmax(logits)[y], written out."""
    return -(logits[torch.arange(len(labels)), labels] - logits.exp().sum(dim=1).log())


@pytest.mark.parametrize("tau", [0.26, 2.0])  # some images kept; none kept (L_u = 0, no NaN)
def test_loss_is_source_ce_plus_u_times_masked_target_ce(untrained, colour_adapt_task, tiny_backbone, tau):
    g = torch.Generator().manual_seed(3)
    xs, xt = F.normalize(torch.randn(5, 32, generator=g), dim=-1), F.normalize(torch.randn(6, 32, generator=g), dim=-1)
    ys = torch.tensor([0, 1, 2, 3, 1])
    scale = tiny_backbone.logit_scale
    probs = (scale * xt @ F.normalize(colour_adapt_task.text_weights, dim=-1).T).softmax(dim=1)  # zero-shot, T = 1
    pseudo, mask = probs.argmax(dim=1), (probs.max(dim=1).values >= tau).float()
    with torch.no_grad():
        ours = untrained.loss_pair(xs, ys, xt, pseudo, mask)
        ls = scale * xs @ reference_text(untrained, tiny_backbone, 0).T
        lt = scale * xt @ reference_text(untrained, tiny_backbone, 1).T
    u = untrained.config.u
    ref = plain_ce(ls, ys).mean() + u * ((plain_ce(lt, pseudo) * mask).sum() / max(float(mask.sum()), 1.0))
    assert (mask.sum() > 0) == (tau < 1)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-5)


def test_each_domain_loss_reaches_only_its_own_domain_context(colour_adapt_task):
    method = create_method("daprompt", epochs=0).fit(colour_adapt_task)
    method.net_.requires_grad_(True)
    x = F.normalize(torch.randn(4, 32, generator=torch.Generator().manual_seed(0)), dim=-1)
    y = torch.tensor([0, 1, 2, 3])
    for on, off in ((0, 1), (1, 0)):
        method.net_.zero_grad()
        F.cross_entropy(method.domain_logits(x, on), y).backward()
        assert method.net_.specific.grad[off].abs().max() == 0
        assert method.net_.specific.grad[on].abs().max() > 0 and method.net_.agnostic.grad.abs().max() > 0


def test_pseudo_labels_are_zero_shot_above_tau(colour_adapt_task, tiny_backbone):
    method = create_method("daprompt", epochs=0, tau=0.26).fit(colour_adapt_task)
    x = F.normalize(colour_adapt_task.extras["target_views"][:, 0], dim=-1)
    probs = (tiny_backbone.logit_scale * x @ F.normalize(colour_adapt_task.text_weights, dim=-1).T).softmax(dim=1)
    keep = (probs.max(dim=1).values >= 0.26).nonzero().flatten()
    index, labels = method.pseudo_labels_
    assert len(keep) > 0 and torch.equal(index, keep) and torch.equal(labels, probs.argmax(dim=1)[keep])


@pytest.mark.parametrize("selection", ["source-val", "target-entropy", "last"])
def test_training_and_selection_without_target_labels(colour_adapt_task, selection):
    method = create_method("daprompt", epochs=2, selection=selection, pseudo_labels="view", tau=0.26)
    info = method.fit(colour_adapt_task).fit_info_
    assert info["epochs"] == 2 and info["selection"] == selection
    assert (info["best_score"] is None) == (selection == "last")
    if selection == "last":
        assert info["best_epoch"] == 1


def test_errors_say_what_is_wrong(colour_task):
    with pytest.raises(VlkitError, match="unlabelled target"):
        create_method("daprompt", epochs=0).fit(colour_task)
    with pytest.raises(VlkitError, match="selection must be"):
        create_method("daprompt", selection="target-accuracy")
    assert create_method("daprompt").config.train_config(16).epochs == 25


@pytest.mark.parametrize("name", ["daprompt", "self-training-cache"])
def test_wrong_feature_width_is_a_clear_error_after_adapting(name, colour_adapt_task):
    from vlkit.errors import ShapeError

    method = create_method(name, **({"epochs": 0} if name == "daprompt" else {"search_steps": (20, 5)}))
    with pytest.raises(ShapeError, match="another backbone"):
        method.fit(colour_adapt_task).logits(torch.randn(3, colour_adapt_task.dim + 1))


def test_class_specific_agnostic_context(colour_adapt_task, colour_test, tiny_backbone, session_store):
    method = create_method("daprompt", epochs=1, class_specific=True, tau=0.0).fit(colour_adapt_task)
    assert method.net_.agnostic.shape == (4, 16, 32) and method.net_.specific.shape == (2, 16, 32)
    init = create_method("daprompt", epochs=0, class_specific=True, ctx_init="a photo", dmx_init="of a")
    x = session_store.image_features(tiny_backbone, colour_test)
    text = tiny_backbone.encode_texts([f"a photo of a {n}, a noisy image." for n in NAMES])
    ref = tiny_backbone.logit_scale * F.normalize(x, dim=-1) @ text.T
    torch.testing.assert_close(init.fit(colour_adapt_task).logits(x), ref, rtol=0, atol=1e-4)


def test_default_context_shrinks_to_fit_a_short_text_tower(tmp_path):
    # vlkit-mini's text tower holds 32 tokens: the paper's 16 + 16 context tokens plus
    # "{digit}, a UCI 8x8 digit image." do not fit, so the default picks the largest equal pair
    import vlkit
    from vlkit.methods.task import Task

    mini = vlkit.load_backbone("vlkit-mini", device="cpu")
    digits = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    g = torch.Generator().manual_seed(0)
    task = Task(classnames=digits, text_weights=F.normalize(torch.randn(10, 384, generator=g), dim=-1),
                train_features=torch.randn(20, 2, 384, generator=g), train_labels=torch.arange(20) % 10,
                backbone=mini, unlabeled_features=torch.randn(8, 384, generator=g),
                extras={"source_domain": "handwritten digit", "target_domain": "UCI 8x8 digit"})
    method = create_method("daprompt", epochs=0).fit(task)
    m = method.fit_info_["n_ctx"]
    assert method.fit_info_["n_dmx"] == m and method.net_.agnostic.shape[0] == m < 16
    assert f"picked n_ctx={m}, n_dmx={m}" in method.fit_info_["context_fitted"]

    def tokens(n: int) -> int:  # the longest prompt's length, counted by the tokenizer itself
        texts = [" ".join(["X"] * n) + f" {c}, a {d} image." for c in digits for d in task.extras.values()]
        return int((mini.tokenize(texts) != 0).sum(dim=1).max())

    assert tokens(2 * m) < 32 <= tokens(2 * m + 2)  # the largest equal pair that fits
    method.save(tmp_path / "dap", backbone_fingerprint=mini.fingerprint)  # reloads in the sizes it picked
    x = torch.randn(3, 384, generator=g)
    torch.testing.assert_close(Method.load(tmp_path / "dap", mini).logits(x), method.logits(x))
    with pytest.raises(VlkitError, match="does not fit the text tower's 32 tokens"):
        create_method("daprompt", epochs=0, n_ctx=16, n_dmx=16).fit(task)  # explicit sizes are kept
    n_dmx = create_method("daprompt", epochs=0, n_ctx=4).fit(task).fit_info_["n_dmx"]  # only the unset one shrinks
    assert tokens(4 + n_dmx) < 32 <= tokens(4 + n_dmx + 1) and n_dmx < 16
    assert "context_fitted" not in create_method("daprompt", epochs=0, n_ctx=4, n_dmx=4).fit(task).fit_info_


def test_default_context_is_the_papers_16_where_it_fits(untrained):
    assert (untrained.fit_info_["n_ctx"], untrained.fit_info_["n_dmx"]) == (16, 16)  # test-tiny: 77 tokens
    assert "context_fitted" not in untrained.fit_info_
