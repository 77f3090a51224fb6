"""Self-training cache against plain references: 0 rounds is Tip-Adapter, rounds re-derived by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlkit.caches.self_training import class_balanced_selection
from vlkit.errors import VlkitError
from vlkit.methods import create_method

FAST = {"search_steps": (20, 5)}


@pytest.fixture(scope="module")
def test_x(colour_test, tiny_backbone, session_store):
    return session_store.image_features(tiny_backbone, colour_test)  # (N, D)


def test_zero_rounds_is_tip_adapter_exactly(colour_adapt_task, test_x):
    ours = create_method("self-training-cache", rounds=0, **FAST).fit(colour_adapt_task)
    tip = create_method("tip-adapter", **FAST).fit(colour_adapt_task)
    assert torch.equal(ours.logits(test_x), tip.logits(test_x))
    assert (ours.alpha_, ours.beta_) == (tip.alpha_, tip.beta_) and torch.equal(ours.keys_, tip.keys_)
    assert len(ours.pseudo_labels_[0]) == 0


def plain_selection(probs: torch.Tensor, portion: float, floor: float, cap: int | None = None) -> list[int]:
    """Loop reference: per predicted class, the round(portion * n_c) (>= 1, <= cap) most confident."""
    chosen = []
    for c in range(probs.shape[1]):
        rows = [i for i in range(len(probs)) if int(probs[i].argmax()) == c]
        rows.sort(key=lambda i: (-float(probs[i].max()), i))
        k = max(1, round(portion * len(rows)))
        chosen += rows[:k if cap is None else min(k, cap)] if rows else []
    return sorted(i for i in chosen if float(probs[i].max()) >= floor)


@pytest.mark.parametrize("portion, floor, cap", [(0.2, 0.0, None), (0.5, 0.0, None), (1.0, 0.0, None),
                                                 (0.5, 0.4, None), (0.5, 0.0, 3), (1.0, 0.0, 1)])
def test_class_balanced_selection(portion, floor, cap):
    probs = torch.randn(50, 5, generator=torch.Generator().manual_seed(1)).mul(2).softmax(dim=1)
    chosen = class_balanced_selection(probs, portion, floor, cap)
    assert chosen.tolist() == plain_selection(probs, portion, floor, cap)
    if cap is not None:  # no predicted class holds more than its cap
        assert torch.bincount(probs[chosen].argmax(dim=1)).max() <= cap


def test_the_cap_keeps_a_dominant_class_to_its_balanced_share():
    # 80 of 100 images predicted as class 0: CBST's portion keeps 40 of them, the cap 12 (round(12.5))
    probs = torch.full((100, 4), 0.1)
    probs[:80, 0], probs[80:, 1:] = 0.7, torch.eye(3).repeat(7, 1)[:20] * 0.6 + 0.1
    uncapped = class_balanced_selection(probs, 0.5)
    capped = class_balanced_selection(probs, 0.5, cap=round(0.5 * 100 / 4))
    assert (probs[uncapped].argmax(1) == 0).sum() == 40 and (probs[capped].argmax(1) == 0).sum() == 12


def tip_logits(x, keys, labels, weights, alpha, beta, c, scale):
    """Tip-Adapter Eq. 6 written out: s x W^T + alpha exp(-beta (1 - x K^T)) L, s the model's logit scale."""
    x = F.normalize(x, dim=-1)
    cache = torch.exp(-beta * (1 - x @ keys.T)) @ F.one_hot(labels, c).float()  # (M, C)
    return scale * x @ F.normalize(weights, dim=-1).T + alpha * cache


@pytest.mark.parametrize("rounds", [1, 2])
def test_rounds_match_a_plain_reimplementation(colour_adapt_task, test_x, rounds):
    task = colour_adapt_task
    ours = create_method("self-training-cache", rounds=rounds, portion=(0.3, 0.6), **FAST).fit(task)
    tip = create_method("tip-adapter", **FAST).fit(task)
    a, b, c, w = tip.alpha_, tip.beta_, task.num_classes, task.text_weights
    views = task.extras["target_views"]
    src_keys = F.normalize(F.normalize(task.train_features[:, 1:], dim=-1).mean(dim=1), dim=-1)
    tgt_keys = F.normalize(F.normalize(views[:, 1:], dim=-1).mean(dim=1), dim=-1)
    q = views[:, 0]
    logits = tip_logits(q, src_keys, task.train_labels, w, a, b, c, task.logit_scale)
    base = logits.clone()
    for r in range(1, rounds + 1):
        portion = 0.3 if rounds == 1 else 0.3 + 0.3 * (r - 1) / (rounds - 1)
        cap = max(1, round(portion * len(q) / c))  # each class's balanced share
        chosen = torch.tensor(plain_selection(logits.softmax(dim=1), portion, 0.0, cap))
        labels = logits.argmax(dim=1)[chosen]
        cache = torch.zeros_like(base)
        for i in range(len(q)):  # leave-one-out: image i never votes for itself
            for j, y in zip(chosen.tolist(), labels.tolist()):
                if j != i:
                    cache[i, y] += torch.exp(-b * (1 - F.normalize(q[i], dim=0) @ tgt_keys[j]))
        logits = base + a * cache
    assert torch.equal(ours.pseudo_labels_[0], chosen) and torch.equal(ours.pseudo_labels_[1], labels)
    keys = torch.cat([src_keys, tgt_keys[chosen]])
    ref = tip_logits(test_x, keys, torch.cat([task.train_labels, labels]), w, a, b, c, task.logit_scale)
    torch.testing.assert_close(ours.logits(test_x), ref, rtol=1e-5, atol=1e-4)
    assert ours.cache_size == len(src_keys) + len(chosen)
    assert [h["round"] for h in ours.fit_info_["rounds"]] == list(range(1, rounds + 1))


def test_needs_an_unlabelled_target(colour_task):
    with pytest.raises(VlkitError, match="unlabelled target"):
        create_method("self-training-cache", **FAST).fit(colour_task)
    with pytest.raises(VlkitError, match="portion"):
        create_method("self-training-cache", portion=(0.0, 0.5))
