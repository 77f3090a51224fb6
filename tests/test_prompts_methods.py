"""CoOp, CoCoOp, KgCoOp, DeFo: identities, what trains, what is saved."""
from __future__ import annotations

import hashlib

import pytest
import torch
import torch.nn.functional as F

from vlkit.methods import Method, create_method
from vlkit.protocols.scoring import method_logits
from vlkit.protocols.base_to_novel import base_to_novel, class_subset, harmonic_mean, split_classes
from vlkit.errors import VlkitError

FEATURE_METHODS = {
    "coop": {"epochs": 3},
    "cocoop": {"epochs": 1, "batch_size": 4},
    "kgcoop": {"epochs": 3},
    "defo": {"epochs": 3, "n_queries": 8, "n_ctx": 4},
}


def digest(backbone) -> str:
    h = hashlib.sha256()
    for key, tensor in sorted(backbone.model.state_dict().items()):
        h.update(key.encode() + tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def zero_shot_logits(task, backbone, test, store):
    zs = create_method("zero-shot", logit_scale=backbone.logit_scale).fit(task)
    return method_logits(zs, backbone, test, store)


@pytest.mark.parametrize("name, options", [("coop", {"ctx_init": "a photo of a"}), ("kgcoop", {})])
def test_untrained_from_a_photo_of_a_is_zero_shot(name, options, colour_task, colour_test, tiny_backbone,
                                                  session_store):
    assert colour_task.templates == ["a photo of a {}."]
    method = create_method(name, epochs=0, **options).fit(colour_task)
    ours = method_logits(method, tiny_backbone, colour_test, session_store)
    ref = zero_shot_logits(colour_task, tiny_backbone, colour_test, session_store)
    # the same prompts; the only difference is the tower trimmed after the end token (float rounding)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-4)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_defo_query_from_a_phrase_encodes_as_that_text(colour_task, tiny_backbone):
    method = create_method("defo", epochs=0, n_queries=3, query_init="a photo of a").fit(colour_task)
    ref = tiny_backbone.encode_texts(["a photo of a."])  # (1, D)
    torch.testing.assert_close(method.queries_, ref.expand(3, -1), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", sorted(FEATURE_METHODS))
def test_gradients_reach_only_the_prompt_parameters(name, colour_task, tiny_backbone):
    method = create_method(name, epochs=0, **{k: v for k, v in FEATURE_METHODS[name].items() if k != "epochs"})
    method.fit(colour_task)
    method.net_.requires_grad_(True)
    x = F.normalize(colour_task.train_features[:, 0], dim=-1)
    method.loss(x, colour_task.train_labels).backward()
    assert all(p.grad is None and not p.requires_grad for p in tiny_backbone.model.parameters())
    grads = {n: p.grad for n, p in method.net_.named_parameters()}
    assert grads and all(g is not None and g.abs().sum() > 0 for g in grads.values()), sorted(grads)


@pytest.mark.parametrize("name", sorted(FEATURE_METHODS))
def test_training_leaves_the_encoder_bitwise_unchanged_and_round_trips(name, colour_task, colour_test,
                                                                     tiny_backbone, session_store, tmp_path):
    before = digest(tiny_backbone)
    torch.manual_seed(0)
    method = create_method(name, **FEATURE_METHODS[name]).fit(colour_task)
    assert digest(tiny_backbone) == before
    logits = method_logits(method, tiny_backbone, colour_test, session_store)
    loaded = Method.load(method.save(tmp_path / name, tiny_backbone.fingerprint), tiny_backbone)
    assert torch.equal(method_logits(loaded, tiny_backbone, colour_test, session_store), logits)
    assert method.fit_info_["epochs"] == FEATURE_METHODS[name]["epochs"]


def test_coop_artifact_is_a_few_kilobytes(colour_task, tiny_backbone, tmp_path):
    method = create_method("coop", epochs=1).fit(colour_task)
    out = method.save(tmp_path / "coop", tiny_backbone.fingerprint)
    size = sum(f.stat().st_size for f in out.iterdir())
    assert set(method.state()) == {"ctx"} and method.trainable_parameters == 16 * 32
    assert size < 8 * 1024, size  # 16 x 32 floats + config; ViT-B/16 (16 x 512) is 32 KB


def test_cocoop_batches_are_exact(colour_task):
    method = create_method("cocoop", epochs=0).fit(colour_task)
    x = F.normalize(colour_task.val_features, dim=-1)
    batched = method.train_logits(x, fast=False)
    one_by_one = torch.cat([method.train_logits(x[i:i + 1], fast=False) for i in range(len(x))])
    torch.testing.assert_close(batched, one_by_one, rtol=1e-5, atol=1e-5)


def test_kgcoop_penalty_is_zero_at_the_hand_crafted_prompt(colour_task):
    method = create_method("kgcoop", epochs=0).fit(colour_task)
    x = F.normalize(colour_task.train_features[:, 0], dim=-1)
    y = colour_task.train_labels
    ce = F.cross_entropy(method.train_logits(x), y)
    assert abs(float(method.loss(x, y) - ce)) < 1e-4


def test_paper_schedules():
    coop = create_method("coop").config
    assert [coop.train_config(s).epochs for s in (1, 2, 4, 8, 16)] == [50, 100, 100, 200, 200]
    cfg = coop.train_config(16)
    assert (cfg.lr, cfg.batch_size, cfg.warmup_epochs, cfg.warmup_lr, cfg.optimizer) == (2e-3, 32, 1, 1e-5, "sgd")
    assert create_method("cocoop").config.train_config(1).epochs == 10
    assert create_method("kgcoop").config.weight == 8.0
    maple = create_method("maple").config.train_config(16)
    assert (maple.epochs, maple.lr, maple.batch_size) == (5, 3.5e-3, 4)
    with pytest.raises(VlkitError, match="position"):
        create_method("coop", position="left")


def test_base_to_novel_split_and_protocol(colour_pool, colour_test, tiny_backbone, session_store):
    assert split_classes(5) == ([0, 1, 2], [3, 4])
    novel = class_subset(colour_test, [2, 3], "novel")
    assert novel.classnames == ["blue", "yellow"] and set(novel.labels) == {0, 1}
    assert harmonic_mean(80.0, 60.0) == pytest.approx(68.571, abs=1e-3) and harmonic_mean(0, 0) == 0
    result = base_to_novel(tiny_backbone, colour_pool, colour_test, "coop", shots=2, seed=0, store=session_store,
                           views=2, epochs=2)
    assert result["base_classes"] == ["red", "green"] and result["novel_classes"] == ["blue", "yellow"]
    assert result["hm"] == pytest.approx(harmonic_mean(result["base"], result["novel"]))
    assert set(result["zero_shot"]) == {"base", "novel", "hm"}
    with pytest.raises(VlkitError, match="cannot classify classes"):
        base_to_novel(tiny_backbone, colour_pool, colour_test, "defo", shots=2, seed=0, store=session_store)


def test_retarget_uses_the_learned_context(colour_task):
    method = create_method("coop", epochs=2).fit(colour_task)
    other = method.retarget(["blue", "red"])
    assert torch.equal(other.net_.ctx, method.net_.ctx) and other.classnames_ == ["blue", "red"]
    torch.testing.assert_close(other.text_features_[1], method.text_features_[0])  # "red" keeps its prompt
