"""Feature-level adapters: CLIP-Adapter, ZS-LP, CLAP, LP++ on synthetic CLIP-like features."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from vlkit.methods import create_method
from vlkit.methods.task import Task

C, D = 5, 24


def clusters(n_per_class: int, seed: int, views: int = 1):
    """Unit-norm features around class means; text weights are noisy means (zero-shot ~ 60-80 %)."""
    g = torch.Generator().manual_seed(100)
    means = F.normalize(torch.randn(C, D, generator=g), dim=-1)
    text = F.normalize(means + 0.9 * torch.randn(C, D, generator=g) / D ** 0.5 * 3, dim=-1)
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(C).repeat_interleave(n_per_class)
    feats = means[labels][:, None] + 0.35 * torch.randn(len(labels), views, D, generator=g) / D ** 0.5 * 3
    return F.normalize(feats, dim=-1), labels, text


@pytest.fixture(scope="module")
def synthetic():
    x, y, text = clusters(16, seed=1, views=4)
    vx, vy, _ = clusters(4, seed=2)
    tx, ty, _ = clusters(60, seed=3)
    task = Task(classnames=[f"c{i}" for i in range(C)], text_weights=text, train_features=x, train_labels=y,
                val_features=vx[:, 0], val_labels=vy)
    return task, tx[:, 0], ty


def accuracy(method, x, y) -> float:
    return float((method.predict(x) == y).float().mean())


QUICK = {"clip-adapter": {"epochs": 60, "lr": 0.05}, "zs-linear-probe": {"epochs": 40}, "clap": {"epochs": 40}, "lp++": {}}


@pytest.mark.parametrize("name", list(QUICK))
def test_adapter_beats_zero_shot(name, synthetic):
    task, tx, ty = synthetic
    zero = accuracy(create_method("zero-shot").fit(task), tx, ty)
    torch.manual_seed(0)
    method = create_method(name, **QUICK[name]).fit(task)
    assert zero < 0.9, "the synthetic task leaves room above zero-shot"
    assert accuracy(method, tx, ty) > zero + 0.05


def test_clip_adapter_with_ratio_zero_is_zero_shot(synthetic):
    task, tx, _ = synthetic
    method = create_method("clip-adapter", ratio=0.0, epochs=2).fit(task)
    zero = create_method("zero-shot").fit(task)
    torch.testing.assert_close(method.logits(tx), zero.logits(tx), atol=1e-4, rtol=1e-5)
    assert method.trainable_parameters == 2 * D * (D // 4)


def test_clip_adapter_text_branch_is_trained_and_saved(synthetic, tmp_path):
    task, tx, _ = synthetic
    torch.manual_seed(0)
    method = create_method("clip-adapter", text_ratio=0.2, epochs=3).fit(task)
    assert method.trainable_parameters == 4 * D * (D // 4)
    loaded = type(method).load(method.save(tmp_path / "a"))
    assert torch.equal(loaded.logits(tx), method.logits(tx))


def test_zs_linear_probe_starts_at_zero_shot(synthetic):
    task, tx, _ = synthetic
    method = create_method("zs-linear-probe", epochs=1)
    method.prototypes_, method.logit_scale_ = task.text_weights.clone(), task.logit_scale
    zero = create_method("zero-shot").fit(task)
    torch.testing.assert_close(method._forward(tx), zero.logits(tx), atol=1e-4, rtol=1e-5)


def test_clap_multipliers_and_anchor(synthetic):
    task, _, _ = synthetic
    torch.manual_seed(0)
    clap = create_method("clap", epochs=40).fit(task)
    lam = torch.tensor(clap.fit_info_["multipliers"])
    feats = task.train_features[:, 1:].reshape(-1, D)  # the augmented views only, as the reference's pool
    labels = task.train_labels.repeat_interleave(task.train_features.shape[1] - 1)
    probs = (task.logit_scale * feats @ task.text_weights.T).softmax(-1)
    expected = torch.stack([probs[labels == c, c].mean() for c in range(C)])
    torch.testing.assert_close(lam, expected, atol=1e-4, rtol=1e-4)
    # same schedule, no epoch selection: the penalty alone keeps CLAP nearer the zero-shot prototypes
    no_val = Task(classnames=task.classnames, text_weights=task.text_weights, train_features=task.train_features,
                  train_labels=task.train_labels)
    drift = {}
    for name in ("clap", "zs-linear-probe"):
        torch.manual_seed(0)
        fitted = create_method(name, epochs=40).fit(no_val)
        drift[name] = float((fitted.prototypes_ - task.text_weights).norm())
    assert drift["clap"] < 0.5 * drift["zs-linear-probe"]


def test_lp_plus_plus_step_sizes_and_arrays_api(synthetic):
    task, tx, ty = synthetic
    x = task.train_features[:, 0]
    method = create_method("lp++", epochs=30).fit(x.numpy(), task.train_labels.numpy(), task.text_weights.numpy())
    eig = float(torch.linalg.eigvalsh(x.T @ x).max())
    assert method.fit_info_["lr_w"] == pytest.approx(4 * len(x) / eig, rel=1e-5)
    scores = x @ task.text_weights.T
    assert method.fit_info_["lr_alpha"] == pytest.approx(len(x) / (4 * float((scores ** 2).sum(0).max())), rel=1e-5)
    assert method.trainable_parameters == C * D + 2 * C
    assert method.logits(tx).shape == (len(tx), C)
