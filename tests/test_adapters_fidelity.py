"""LP++, ZS-LP/CLAP, CLIP-Adapter and the linear probe against plain transcriptions of the
reference computations (written here from the papers and from what the authors' code
does; docs/fidelity.md lists the references and the departures)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from vlkit.methods import create_method
from vlkit.methods.linear_probe import search_c
from vlkit.methods.task import Task

C, D = 4, 16


def unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True)


def problem(n_per_class: int, views: int, seed: int, spread: float = 0.6):
    """Unit-norm features around fixed class means, unit-norm noisy text weights (C, D)."""
    g = torch.Generator().manual_seed(100)
    means = unit(torch.randn(C, D, generator=g))
    text = unit(means + 0.8 * torch.randn(C, D, generator=g))
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(n_per_class)
    feats = unit(means[labels][:, None] + spread * torch.randn(len(labels), views, D, generator=g))
    return feats, labels, text


# ---- LP++ ------------------------------------------------------------------------------------

def lp_plus_plus_reference(x, y, text_dc, vx, vy, bias0, epochs, reset_alpha_grad=False):
    """LP++ as methods/linear_probe_p2.py trains it: returns the kept (W, b, alpha).

    ``reset_alpha_grad``: the variant vlkit ran before (alpha's gradient zeroed after each update)."""
    n = x.shape[0]
    classes = text_dc.shape[1]
    centroids = torch.stack([x[y == k].sum(0) for k in range(classes)])  # class sums, not means
    scores = x @ text_dc  # (N, C)
    own_mean = torch.stack([scores[y == k, k].mean() for k in range(classes)])
    alpha0 = float((250.0 * own_mean).mean())
    lr_w = 4 * n / float(np.linalg.eigvalsh((x.T @ x).double().numpy()).max())
    lr_alpha = n / (4 * float((scores ** 2).sum(0).max()))
    weight = centroids.clone().requires_grad_(True)
    bias = bias0.clone().requires_grad_(True)
    alpha = (alpha0 * torch.ones(1, classes)).requires_grad_(True)
    velocity = [torch.zeros_like(weight), torch.zeros_like(bias)]
    best, kept = 0.0, None
    for epoch in range(epochs):
        logits = x @ weight.T + bias + torch.ones(n, 1) @ alpha * scores
        loss = F.cross_entropy(logits, y)
        weight.grad, bias.grad = None, None  # the optimiser zeroes W and b only; alpha.grad keeps summing
        loss.backward()
        with torch.no_grad():
            for i, p in enumerate((weight, bias)):  # SGD, momentum 0.9, first step: buffer = gradient
                velocity[i] = p.grad.clone() if epoch == 0 else 0.9 * velocity[i] + p.grad
                p -= lr_w * velocity[i]
            if (epoch + 1) % 10 == 0:
                alpha -= lr_alpha * alpha.grad
                if reset_alpha_grad:
                    alpha.grad = None
            if vx is None:  # no validation: the last epoch
                kept = (weight.clone(), bias.clone(), alpha.clone())
                continue
            val_logits = vx @ weight.T + bias + alpha * (vx @ text_dc)
            acc = float((val_logits.argmax(1) == vy).float().mean())
            if acc >= best:
                best, kept = acc, (weight.clone(), bias.clone(), alpha.clone())
    return kept


def test_lp_plus_plus_matches_the_reference_training():
    feats, labels, text = problem(10, views=3, seed=1, spread=0.9)
    vfeats, vlabels, _ = problem(6, views=1, seed=2, spread=0.9)
    tfeats, _, _ = problem(25, views=1, seed=3, spread=0.9)
    seed = 7
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=feats, train_labels=labels,
                val_features=vfeats[:, 0], val_labels=vlabels, seed=seed)
    method = create_method("lp++", epochs=60).fit(task)
    # nn.Linear's default bias initialisation, U(-1/sqrt(D), 1/sqrt(D)), drawn with the task's seed
    bias0 = torch.empty(C).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D), generator=torch.Generator().manual_seed(seed))
    # the reference trains on one augmented pass: vlkit's cached view 1
    weight, bias, alpha = lp_plus_plus_reference(feats[:, 1], labels, text.T, vfeats[:, 0], vlabels, bias0, 60)
    x = tfeats[:, 0]
    expected = x @ weight.T + bias + alpha * (x @ text.T)
    torch.testing.assert_close(method.logits(x), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert method.fit_info_["train_view"] == "augmented"


def test_lp_plus_plus_reference_test_tells_the_alpha_gradient_apart():
    """The transcription test has teeth: resetting alpha's gradient (vlkit's old loop) ends elsewhere."""
    feats, labels, text = problem(10, views=2, seed=1, spread=0.9)
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=feats, train_labels=labels)
    method = create_method("lp++", epochs=40).fit(task)
    bias0 = torch.empty(C).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D), generator=torch.Generator().manual_seed(0))
    ref = lp_plus_plus_reference(feats[:, 1], labels, text.T, None, None, bias0, 40)
    reset = lp_plus_plus_reference(feats[:, 1], labels, text.T, None, None, bias0, 40, reset_alpha_grad=True)
    torch.testing.assert_close(method.alpha_, ref[2][0], rtol=1e-5, atol=1e-4)
    assert float((method.alpha_ - reset[2][0]).abs().max()) > 1e-2


# ---- ZS-LP / CLAP --------------------------------------------------------------------------------

def zs_lp_reference(pool, pool_labels, anchor, images, scale, lam, epochs, seed, lr=0.1, batch=256):
    """ZS-LP/CLAP's training (trainers/adapters.py under Dassl): prototypes from the raw text
    embedding; per epoch max(1, images // 256) batches of the shuffled augmented pool; SGD
    momentum 0.9; warm-up epoch at 1e-5, then cosine over the epochs stepped per epoch."""
    protos = anchor.clone().requires_grad_(True)
    velocity = None
    g = torch.Generator().manual_seed(seed)  # the same shuffles as vlkit (one permutation per epoch)
    for epoch in range(epochs):
        rate = 1e-5 if epoch == 0 else 0.5 * lr * (1 + math.cos(math.pi * (epoch - 1) / epochs))
        order = torch.randperm(len(pool), generator=g)
        for b in range(max(1, images // batch)):
            idx = order[b * batch:(b + 1) * batch]
            logits = scale * unit(pool[idx]) @ unit(protos).T
            loss = F.cross_entropy(logits, pool_labels[idx])
            if lam is not None:
                loss = loss + (lam * ((protos - anchor) ** 2).sum(-1)).mean()
            protos.grad = None
            loss.backward()
            with torch.no_grad():
                velocity = protos.grad.clone() if velocity is None else 0.9 * velocity + protos.grad
                protos -= rate * velocity
    return protos.detach()


@pytest.mark.parametrize("name", ["zs-linear-probe", "clap"])
def test_zs_lp_and_clap_match_the_reference_steps(name):
    feats, labels, text = problem(150, views=3, seed=4)  # 600 images: 2 batches per epoch
    g = torch.Generator().manual_seed(5)
    raw = text * (3 + 5 * torch.rand(C, 1, generator=g))  # unnormalised class text embeddings
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=unit(raw), train_features=feats,
                train_labels=labels, seed=3, logit_scale=43.96, extras={"text_embeddings": raw})
    method = create_method(name, epochs=3).fit(task)
    pool = feats[:, 1:].reshape(-1, D)  # augmented views only
    pool_labels = labels.repeat_interleave(2)
    lam = None
    if name == "clap":  # mean zero-shot probability of each class on its own augmented features
        probs = (43.96 * unit(pool) @ unit(raw).T).softmax(-1)
        lam = torch.stack([probs[pool_labels == k, k].mean() for k in range(C)])
        torch.testing.assert_close(torch.tensor(method.fit_info_["multipliers"]), lam, atol=1e-4, rtol=0)
    expected = zs_lp_reference(pool, pool_labels, raw, len(labels), 43.96, lam, 3, seed=3)
    torch.testing.assert_close(method.prototypes_, expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert method.fit_info_["batches_per_epoch"] == 2 and method.fit_info_["anchor"] == "task.extras"
    x = feats[:, 0]
    torch.testing.assert_close(method.logits(x), 43.96 * unit(x) @ unit(expected).T, rtol=1e-5, atol=1e-4)


def test_zs_lp_anchor_is_the_raw_text_encoder_mean(tiny_backbone):
    from vlkit.features.text_weights import class_text_embeddings, zero_shot_weights

    classes, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."]
    raw = class_text_embeddings(tiny_backbone, classes, templates)
    with torch.no_grad():
        for i, c in enumerate(classes):
            out = tiny_backbone.model.encode_text(tiny_backbone.tokenize([t.format(c) for t in templates])).float()
            torch.testing.assert_close(raw[i], out.mean(0), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2))  # not the unit-norm zero-shot weights
    weights = zero_shot_weights(tiny_backbone, classes, templates)
    assert float(F.cosine_similarity(raw, weights).min()) > 0.9


def test_zs_lp_uses_the_task_logit_scale_and_keeps_a_better_start():
    feats, labels, text = problem(8, views=3, seed=6)
    vfeats, vlabels, _ = problem(4, views=1, seed=7)
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=feats, train_labels=labels,
                val_features=vfeats[:, 0], val_labels=vlabels, logit_scale=20.0)
    method = create_method("zs-linear-probe", epochs=5).fit(task)
    assert method.fit_info_["logit_scale"] == 20.0 and method.fit_info_["initial_val"] is not None
    assert method.fit_info_["best_val"] >= method.fit_info_["initial_val"]
    assert create_method("zs-linear-probe", epochs=5, logit_scale=50.0).fit(task).fit_info_["logit_scale"] == 50.0


# ---- CLIP-Adapter ----------------------------------------------------------------------------------

def test_clip_adapter_forward_and_one_step_match_the_equations():
    feats, labels, text = problem(6, views=2, seed=8)
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=feats, train_labels=labels,
                logit_scale=43.96)
    torch.manual_seed(11)
    method = create_method("clip-adapter", epochs=1, warmup_epochs=0, batch_size=64).fit(task)
    # the reference's adapter: Linear(D, D/4, no bias), ReLU, Linear(D/4, D, no bias), ReLU, same seed
    torch.manual_seed(11)
    w1 = torch.nn.Linear(D, D // 4, bias=False).weight.detach().clone().requires_grad_(True)  # (D/4, D)
    w2 = torch.nn.Linear(D // 4, D, bias=False).weight.detach().clone().requires_grad_(True)  # (D, D/4)

    def forward(x, a, b):  # Eq. (2) and (4), then cosine logits at the backbone's scale
        adapted = 0.2 * torch.relu(torch.relu(x @ a.T) @ b.T) + 0.8 * x
        return 43.96 * unit(adapted) @ unit(text).T

    x = feats[:, 1]  # the one cached augmented view; one batch holds every image
    loss = F.cross_entropy(forward(x, w1, w2), labels)
    loss.backward()
    with torch.no_grad():  # Dassl's SGD, first step (momentum buffer = gradient + 5e-4 w) at the cosine's first rate
        w1 -= 1e-2 * (w1.grad + 5e-4 * w1)
        w2 -= 1e-2 * (w2.grad + 5e-4 * w2)
        expected = forward(feats[:, 0], w1, w2)
    torch.testing.assert_close(method.logits(feats[:, 0]), expected, rtol=1e-5, atol=1e-5 * float(expected.abs().max()))
    assert method.fit_info_["logit_scale"] == pytest.approx(43.96)


# ---- linear probe --------------------------------------------------------------------------------------

def reference_search(score, steps=8):
    """CoOp's lpclip / LP++'s linear_probe.py search: argmax over a descending decade sweep, then
    binary search in log10 C between C*/10 and 10 C*. The reference keeps the left end on a tie;
    vlkit's stated rule keeps the end nearer the coarse peak (here a single value), then the left."""
    sweep = [1e6, 1e4, 1e2, 1, 1e-2, 1e-4, 1e-6]
    accs = [score(c) for c in sweep]
    assert accs.count(max(accs)) == 1, "the constructed problem must have one best coarse value"
    peak = sweep[int(np.argmax(accs))]
    left, right = 0.1 * peak, 10 * peak
    final = None
    for _ in range(steps):
        acc_left, acc_right = score(left), score(right)
        near_right = abs(np.log10(right) - np.log10(peak)) < abs(np.log10(left) - np.log10(peak)) - 1e-12
        if acc_left < acc_right or (acc_left == acc_right and near_right):
            final = right
            left, right = 0.5 * (np.log10(right) + np.log10(left)), np.log10(right)
        else:
            final = left
            right, left = 0.5 * (np.log10(right) + np.log10(left)), np.log10(left)
        left, right = 10 ** left, 10 ** right
    return final


def test_linear_probe_search_picks_what_the_reference_search_picks():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 10))
    x = rng.standard_normal((60, 10)).astype(np.float32)
    y = (x @ w.T + 2.5 * rng.standard_normal((60, 3))).argmax(1)  # noisy labels: accuracy varies with C
    vx = rng.standard_normal((4000, 10)).astype(np.float32)
    vy = (vx @ w.T).argmax(1)  # a large, clean validation set: fine-grained accuracies, no ties
    cache: dict = {}

    def score(c):
        key = round(math.log10(c), 9)
        if key not in cache:
            model = LogisticRegression(C=c, max_iter=1000, random_state=0).fit(x, y)
            cache[key] = float((model.predict(vx) == vy).mean())
        return cache[key]

    expected = reference_search(score)
    task = Task.from_arrays(x, y, np.eye(3, 10, dtype=np.float32), val_features=vx, val_labels=vy)
    method = create_method("linear-probe").fit(task)
    assert method.fit_info_["C"] == pytest.approx(expected, rel=1e-6)
    grid = [c for c, _ in method.fit_info_["val_scores"]]
    assert grid == sorted(grid) and all(isinstance(c, float) for c in grid)  # numeric, in numeric order
    ref = LogisticRegression(C=method.fit_info_["C"], max_iter=1000, random_state=0).fit(x, y)
    torch.testing.assert_close(method.logits(torch.from_numpy(vx[:50])),
                               torch.from_numpy(ref.decision_function(vx[:50])).float(),
                               atol=1e-4, rtol=1e-4)


def test_linear_probe_ties_break_toward_the_middle_not_an_edge():
    # every C scores the same (a tiny validation split): C = 1, the middle of 1e-6..1e6
    assert search_c(lambda c: 0.5, [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6], 8) == pytest.approx(1.0)
    # a plateau over 1e-2..1e4 (centre 1e1): the coarse pick nearest the centre (1 and 1e2 are
    # equally near: the smaller), then binary-search ties move toward the centre
    plateau = search_c(lambda c: 0.9 if 1e-2 <= c <= 1e4 else 0.5, [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6], 8)
    assert 1.0 < plateau <= 10.0
    # a unique peak stays unique
    assert search_c(lambda c: -abs(math.log10(c) - 2.3), [1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e6], 8) == \
        pytest.approx(10 ** 2.3, rel=0.01)


def test_linear_probe_all_ties_on_real_fit_choose_c_one_and_save_numeric_grid(tmp_path):
    feats, labels, text = problem(8, views=1, seed=9, spread=0.1)  # well separated: every C is perfect
    vfeats, vlabels, _ = problem(4, views=1, seed=10, spread=0.1)
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=feats, train_labels=labels,
                val_features=vfeats[:, 0], val_labels=vlabels)
    method = create_method("linear-probe").fit(task)
    assert {s for _, s in method.fit_info_["val_scores"]} == {1.0}
    assert method.fit_info_["C"] == pytest.approx(1.0)
    loaded = type(method).load(method.save(tmp_path / "lp"))
    grid = [c for c, _ in loaded.fit_info_["val_scores"]]
    assert grid == sorted(grid) and grid[0] == pytest.approx(1e-6) and grid[-1] == pytest.approx(1e6)
