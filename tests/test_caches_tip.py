"""Tip-Adapter(-F) against the paper's equations, the brute-force search, the sklearn API."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlkit.caches import TipAdapter, TipAdapterF
from vlkit.errors import NotFittedError, ShapeError, VlkitError
from vlkit.methods.task import Task
from search_reference import nearest_centre


def random_problem(seed: int = 0, c: int = 5, d: int = 24, shots: int = 4, views: int = 4, m: int = 30):
    """Clustered random features: class means plus noise, so the cache carries signal."""
    g = torch.Generator().manual_seed(seed)
    means = F.normalize(torch.randn(c, d, generator=g), dim=-1)
    text = F.normalize(means + 0.4 * torch.randn(c, d, generator=g), dim=-1)  # (C, D)
    labels = torch.arange(c).repeat_interleave(shots)  # (N,)
    feats = F.normalize(means[labels][:, None] + 0.2 * torch.randn(len(labels), views, d, generator=g), dim=-1)
    val_labels = torch.arange(c).repeat(m // c)
    val = F.normalize(means[val_labels] + 0.2 * torch.randn(len(val_labels), d, generator=g), dim=-1)
    return feats, labels, text, val, val_labels


def tip_equation(f, keys, labels, text, alpha, beta):
    """Tip-Adapter logits (Sec. 3.2): 100 f W^T + alpha exp(-beta (1 - f F^T)) L, written out."""
    f = f / f.norm(dim=-1, keepdim=True)
    one_hot = torch.zeros(len(labels), text.shape[0])
    one_hot[torch.arange(len(labels)), labels] = 1.0
    return 100.0 * f @ text.T + alpha * torch.exp(-beta * (1.0 - f @ keys.T)) @ one_hot


def test_logits_match_equation_with_mean_of_augmented_views():
    feats, labels, text, val, _ = random_problem()
    model = TipAdapter(alpha=1.7, beta=5.5).fit(feats, labels, text)
    # keys: mean of the augmented views (1..V-1), renormalised
    keys = feats[:, 1:].mean(dim=1)
    keys = keys / keys.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(model.keys_, keys)
    torch.testing.assert_close(model.logits(val), tip_equation(val, keys, labels, text, 1.7, 5.5))


def test_sklearn_api_two_dimensional_keys_and_errors():
    feats, labels, text, val, _ = random_problem()
    model = TipAdapter(alpha=1.0, beta=2.0)
    with pytest.raises(NotFittedError):
        model.logits(val)
    assert model.fit(feats[:, 0], labels, text) is model
    assert model.keys_.shape == (len(labels), feats.shape[-1]) and model.values_.shape == (len(labels), 5)
    assert model.alpha_ == 1.0 and model.beta_ == 2.0 and model.trainable_parameters == 0
    assert model.predict(val).shape == (len(val),)
    with pytest.raises(ShapeError, match="another backbone"):
        model.logits(torch.randn(3, feats.shape[-1] + 1))
    with pytest.raises(ShapeError):
        TipAdapter().fit(feats[:, 0], labels[:-1], text)
    with pytest.raises(VlkitError, match="alpha"):
        TipAdapter(alpha=-1.0)


def brute_force_tip(feats_val, labels_val, keys, labels, text, betas, alphas):
    """The authors' double loop (affinities recomputed at every point), then vlkit's tie rule:
    of the points at the best accuracy, the one nearest the grid's centre in grid steps (each
    axis scaled to [-1/2, 1/2]); equally near points keep loop order."""
    scored = []  # (correct, (beta index, alpha index)) in loop order
    for ib, beta in enumerate(betas):
        for ia, alpha in enumerate(alphas):
            logits = tip_equation(feats_val, keys, labels, text, alpha, beta)
            scored.append((int((logits.argmax(-1) == labels_val).sum()), (ib, ia)))
    ib, ia = nearest_centre(scored, (len(betas), len(alphas)))
    return (betas[ib], alphas[ia]), max(count for count, _ in scored)


def test_vectorised_search_picks_the_brute_force_point():
    chosen = []
    for seed in range(3):
        feats, labels, text, val, val_labels = random_problem(seed)
        model = TipAdapter(search_steps=(200, 20)).fit(feats, labels, text, val, val_labels)
        betas = [0.1 + i * (12.0 - 0.1) / 200 for i in range(200)]
        alphas = [0.1 + i * (10.0 - 0.1) / 20 for i in range(20)]
        (beta, alpha), best = brute_force_tip(val, val_labels, model.keys_, labels, text, betas, alphas)
        assert (model.beta_, model.alpha_) == (beta, alpha)
        assert math.isclose(model.fit_info_["val_accuracy"], 100.0 * best / len(val_labels))
        assert model.fit_info_["grid_points"] == 4000
        chosen.append((beta, alpha))
    assert all(point != (0.1, 0.1) for point in chosen), "the problems must make the search non-trivial"


def test_add_equals_fitting_on_everything():
    feats, labels, text, val, _ = random_problem()
    full = TipAdapter(alpha=2.0, beta=3.0).fit(feats, labels, text)
    grown = TipAdapter(alpha=2.0, beta=3.0).fit(feats[:7], labels[:7], text).add(feats[7:], labels[7:])
    torch.testing.assert_close(grown.logits(val), full.logits(val))
    assert grown.cache_size == len(labels)
    with pytest.raises(ShapeError, match="another backbone"):
        grown.add(torch.randn(2, feats.shape[-1] + 3), [0, 1])
    with pytest.raises(ShapeError, match="class indices"):
        grown.add(torch.randn(1, feats.shape[-1]), [9])


def test_zero_shot_start_is_clip():
    _, _, text, val, _ = random_problem()
    d = text.shape[1]
    empty = TipAdapter(alpha=1.0, beta=5.0).fit(torch.zeros(0, d), torch.zeros(0, dtype=torch.long), text)
    torch.testing.assert_close(empty.logits(val), 100.0 * F.normalize(val, dim=-1) @ text.T)


def test_sparse_index_affinities_agree_with_dense_when_k_covers_the_cache():
    feats, labels, text, val, _ = random_problem(d=32)
    dense = TipAdapter(alpha=1.5, beta=4.0).fit(feats, labels, text)
    sparse = TipAdapter(alpha=1.5, beta=4.0, sparse_above=0, top_k=len(labels)).fit(feats, labels, text)
    assert sparse._store.index is not None and dense._store.index is None
    torch.testing.assert_close(sparse.logits(val), dense.logits(val), rtol=1e-5, atol=1e-4)
    # a top-k cut keeps the nearest keys only: still close when the far keys contribute little
    cut = TipAdapter(alpha=1.5, beta=4.0, sparse_above=0, top_k=8).fit(feats, labels, text)
    assert cut.logits(val).shape == dense.logits(val).shape


def test_tip_adapter_f_trains_keys_and_selects_on_validation():
    feats, labels, text, val, val_labels = random_problem(seed=1)
    torch.manual_seed(0)
    model = TipAdapterF(epochs=4, search_steps=(40, 10)).fit(Task(
        classnames=[str(i) for i in range(5)], text_weights=text, train_features=feats, train_labels=labels,
        val_features=val, val_labels=val_labels))
    initial = F.normalize(feats[:, 1:].mean(1), dim=-1)
    info = model.fit_info_
    assert model.trainable_parameters == initial.numel()
    assert len(info["val_per_epoch"]) == 4 and -1 <= info["best_epoch"] < 4  # -1: the untrained keys won
    if info["best_epoch"] >= 0:
        assert not torch.allclose(model.keys_, initial)  # the keys moved
    best = info["initial_val"] if info["best_epoch"] < 0 else info["val_per_epoch"][info["best_epoch"]]
    assert info["val_accuracy"] == best == max([info["initial_val"], *info["val_per_epoch"]])
    # inference is the Sec. 3.2 logits with the fine-tuned keys (not renormalised, as in the reference)
    torch.testing.assert_close(model.logits(val),
                               tip_equation(val, model.keys_, labels, text, model.alpha_, model.beta_))


def test_label_values_sum_like_the_dense_one_hot_matmul():
    from vlkit.caches.common import LabelValues, combine

    g = torch.Generator().manual_seed(5)
    labels, scale = torch.randint(0, 6, (40,), generator=g), torch.rand(40, generator=g) + 0.5
    weights = torch.rand(7, 40, generator=g)
    for values in (LabelValues(labels, 6), LabelValues(labels, 6, scale)):
        torch.testing.assert_close(combine(weights, values), weights @ values.dense())
        # top-k form: only the listed keys count; an id of -1 (FAISS found fewer) weighs nothing
        ids = torch.randint(0, 40, (7, 5), generator=g)
        ids[0, -1] = -1
        dense_w = torch.zeros(7, 40)
        for m in range(7):
            for j in range(5):
                if ids[m, j] >= 0:
                    dense_w[m, ids[m, j]] += weights[m, j]
        expected = dense_w @ values.dense()
        torch.testing.assert_close(combine(weights[:, :5], values, ids), expected)
        torch.testing.assert_close(combine(weights[:, :5], values.dense(), ids), expected)


def test_leave_one_out_retune_picks_the_brute_force_point():
    feats, labels, text, _, _ = random_problem(seed=4, shots=3)
    model = TipAdapter(alpha=1.0, beta=5.5, search_steps=(40, 10)).fit(feats, labels, text)
    found = model.retune()
    keys = model.keys_
    betas = [0.1 + i * (12.0 - 0.1) / 40 for i in range(40)]
    alphas = [0.1 + i * (10.0 - 0.1) / 10 for i in range(10)]
    scored = []
    for ib, beta in enumerate(betas):
        for ia, alpha in enumerate(alphas):
            correct = 0
            for i in range(len(keys)):  # classify each cached example by the others
                others = torch.arange(len(keys)) != i
                logits = tip_equation(keys[i:i + 1], keys[others], labels[others], text, alpha, beta)
                correct += int(logits.argmax(-1) == labels[i])
            scored.append((correct, (ib, ia)))
    ib, ia = nearest_centre(scored, (len(betas), len(alphas)))
    assert (model.beta_, model.alpha_) == (betas[ib], alphas[ia]) and found["grid_points"] == 400
    assert model.fit_info_["searched"] == "leave-one-out"
    assert TipAdapter(alpha=1.0, beta=1.0).fit(feats[:1], labels[:1], text).retune() == {}  # nothing to leave out
