"""Cache keys as the reference builds them: the mean of the RAW augmented views, then L2-normalised.

Tip-Adapter's cache builder (which APE and TIP-X reuse) stacks the encoder's outputs
of its augmented passes, averages them and only then divides by the norm. vlkit's store
keeps unit features and their norms; the keys rebuilt from them must be that formula.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_caches_tip import random_problem
from vlkit.caches import APE, TipAdapter, TipX
from vlkit.caches.common import cache_keys
from vlkit.errors import ShapeError
from vlkit.methods.task import Task


def raw_views(seed: int = 0, n: int = 20, views: int = 5, d: int = 24, spread: float = 0.3) -> torch.Tensor:
    """(N, V, D) raw features whose norms differ from view to view by about ``spread``."""
    g = torch.Generator().manual_seed(seed)
    directions = torch.randn(n, 1, d, generator=g) + 0.6 * torch.randn(n, views, d, generator=g)
    scale = 10.0 * (1 + spread * torch.rand(n, views, 1, generator=g))
    return directions / directions.norm(dim=-1, keepdim=True) * scale


def reference_keys(raw: torch.Tensor) -> torch.Tensor:
    """The reference: mean over the augmented passes (views 1..) of the raw features, then normalise."""
    summed = torch.zeros_like(raw[:, 0])
    for v in range(1, raw.shape[1]):
        summed += raw[:, v]
    mean = summed / (raw.shape[1] - 1)
    return mean / mean.norm(dim=-1, keepdim=True)


def stored(raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """What the feature store keeps: unit features (N, V, D) and their norms (N, V)."""
    norms = raw.norm(dim=-1)
    return raw / norms[..., None], norms


def test_keys_from_unit_views_and_norms_equal_the_raw_mean_formula():
    raw = raw_views()
    unit, norms = stored(raw)
    torch.testing.assert_close(cache_keys(unit, norms), reference_keys(raw), rtol=1e-5, atol=1e-6)
    # the old formula (mean of normalised views) is a different key when norms differ
    old = F.normalize(unit[:, 1:].mean(1), dim=-1)
    assert (cache_keys(unit, norms) - old).abs().max() > 1e-3
    # without norms (plain arrays): that old formula, as documented
    torch.testing.assert_close(cache_keys(unit), old)
    with pytest.raises(ShapeError, match="norms must be"):
        cache_keys(unit, norms[:, 1:])


def test_one_view_only_uses_the_eval_view():
    raw = raw_views(views=1)
    unit, norms = stored(raw)
    torch.testing.assert_close(cache_keys(unit, norms), F.normalize(raw[:, 0], dim=-1))


def task_with_norms(seed: int = 0) -> tuple[Task, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A task whose (unit) train features carry their norms, plus the raw features and validation."""
    feats, labels, text, val, val_labels = random_problem(seed=seed)
    g = torch.Generator().manual_seed(seed + 10)
    raw = feats * (8.0 + 4.0 * torch.rand(*feats.shape[:2], 1, generator=g))  # (N, V, D), norms 8..12
    unit, norms = stored(raw)
    task = Task(classnames=[f"c{i}" for i in range(text.shape[0])], text_weights=text, train_features=unit,
                train_norms=norms, train_labels=labels, val_features=val, val_labels=val_labels)
    return task, raw, val, labels


def test_tip_adapter_ape_and_tipx_build_their_keys_from_the_raw_views():
    task, raw, val, labels = task_with_norms()
    keys = reference_keys(raw)  # (N, D)
    tip = TipAdapter(alpha=1.0, beta=2.0).fit(task)
    torch.testing.assert_close(tip.keys_, keys, rtol=1e-5, atol=1e-6)
    tipx = TipX(alpha=1.0, beta=2.0, gamma=0.5).fit(task)
    torch.testing.assert_close(tipx.keys_, keys, rtol=1e-5, atol=1e-6)
    ape = APE(alpha=1.0, beta=2.0, gamma=0.5, channels=12).fit(task)
    refined = keys[:, ape.channels_]
    torch.testing.assert_close(ape.keys_, refined / refined.norm(dim=-1, keepdim=True), rtol=1e-5, atol=1e-6)
    # and the keys change the logits: a task without norms gives other ones
    plain = Task.from_arrays(task.train_features, labels, task.text_weights)
    assert not torch.allclose(TipAdapter(alpha=1.0, beta=2.0).fit(plain).logits(val), tip.logits(val), atol=1e-5)


def test_task_checks_the_norms_shape():
    task, _, _, _ = task_with_norms()
    with pytest.raises(ShapeError, match="train_norms must be"):
        Task(classnames=task.classnames, text_weights=task.text_weights, train_features=task.train_features,
             train_norms=task.train_norms[:, :2], train_labels=task.train_labels)


def test_build_task_fills_the_norms_from_the_store(colour_task, colour_adapt_task, session_store):
    for task in (colour_task, colour_adapt_task):
        assert task.train_norms is not None and task.train_norms.shape == task.train_features.shape[:2]
        assert (task.train_norms > 0).all()
    assert not torch.allclose(colour_task.train_norms[:, 1], colour_task.train_norms[:, 2])
