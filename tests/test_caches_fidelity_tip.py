"""Tip-Adapter, Tip-Adapter-F, APE-T and the other caches against the authors' computations
written plainly: the backbone's logit scale, the per-batch cosine, the per-epoch alpha/beta
search, and a saved method predicting as the fitted one (issues 16 and 21)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from test_caches_tip import random_problem
from vlkit.caches import APE, GDA, APET, TipAdapter, TipAdapterF, TipX
from vlkit.caches.common import Affinity
from vlkit.caches.tip_adapter import search_alpha_beta
from vlkit.methods import Method, create_method
from vlkit.methods.task import Task

MINI_SCALE = 43.96  # vlkit-mini v1's exp(logit_scale), rounded: a scale far from CLIP's 100


def make_task(seed: int = 0, scale: float = MINI_SCALE, **kwargs) -> Task:
    feats, labels, text, val, val_labels = random_problem(seed, **kwargs)
    return Task(classnames=[str(i) for i in range(text.shape[0])], text_weights=text, train_features=feats,
                train_labels=labels, val_features=val, val_labels=val_labels, logit_scale=scale)


def tip_formula(x, keys, labels, text, alpha, beta, scale):
    """Tip-Adapter's logits written plainly: scale * x W^T + alpha * exp(-beta (1 - x K^T)) L."""
    x = x / x.norm(dim=-1, keepdim=True)
    one_hot = torch.zeros(len(labels), text.shape[0])
    one_hot[torch.arange(len(labels)), labels] = 1.0
    return scale * x @ text.T + alpha * torch.exp(-beta * (1.0 - x @ keys.T)) @ one_hot


def test_tip_adapter_uses_the_task_logit_scale():
    task = make_task()
    keys = F.normalize(task.train_features[:, 1:].mean(1), dim=-1)
    fixed = TipAdapter(alpha=1.3, beta=4.0).fit(task)
    assert fixed.logit_scale_ == MINI_SCALE
    torch.testing.assert_close(fixed.logits(task.val_features),
                               tip_formula(task.val_features, keys, task.train_labels, task.text_weights, 1.3, 4.0,
                                           MINI_SCALE))
    searched = TipAdapter(search_steps=(40, 10)).fit(task)  # the search scores the same logits
    torch.testing.assert_close(searched.logits(task.val_features),
                               tip_formula(task.val_features, keys, task.train_labels, task.text_weights,
                                           searched.alpha_, searched.beta_, MINI_SCALE))
    # an explicit number still overrides; arrays (no backbone) get OpenAI CLIP's 100
    assert TipAdapter(alpha=1.0, beta=1.0, logit_scale=100.0).fit(task).logit_scale_ == 100.0
    feats, labels, text, _, _ = random_problem()
    assert TipAdapter(alpha=1.0, beta=1.0).fit(feats, labels, text).logit_scale_ == 100.0


def test_every_cache_method_and_zero_shot_scale_clip_by_the_task():
    task = make_task()
    x = F.normalize(task.val_features, dim=-1)
    zero_shot = create_method("zero-shot").fit(task)
    torch.testing.assert_close(zero_shot.logits(x), MINI_SCALE * x @ task.text_weights.T)
    # with the cache switched off (alpha 0) each method is zero-shot at the task's scale
    for method in (APE(alpha=0.0, beta=1.0, gamma=0.0, channels=16), GDA(alpha=0.0),
                   TipX(alpha=0.0, beta=1.0, gamma=0.0)):
        torch.testing.assert_close(method.fit(task).logits(x), MINI_SCALE * x @ task.text_weights.T,
                                   msg=method.name)
        assert method.logit_scale_ == MINI_SCALE


@pytest.mark.parametrize("name, options", [
    ("zero-shot", {}), ("tip-adapter", {"search_steps": (20, 5)}),
    ("tip-adapter-f", {"epochs": 2, "search_steps": (20, 5)}), ("ape", {"channels": 16, "search_steps": (10, 5, 3)}),
    ("ape-t", {"epochs": 2, "channels": 10, "search_steps": (10, 5)}), ("tip-x", {"search_steps": (3, 5, 3)}),
    ("gda", {})])
def test_a_saved_method_predicts_with_the_scale_it_was_fitted_with(tmp_path, name, options):
    task = make_task(seed=2)
    torch.manual_seed(0)
    method = create_method(name, **options).fit(task)
    assert method.logit_scale_ == MINI_SCALE
    method.save(tmp_path / name)
    loaded = Method.load(tmp_path / name)
    assert loaded.logit_scale_ == MINI_SCALE and loaded.config.logit_scale is None
    torch.testing.assert_close(loaded.logits(task.val_features), method.logits(task.val_features), rtol=0, atol=0)


def _learning_rates(method: Method, task: Task) -> list[float]:
    """The lr of every AdamW step ``method.fit(task)`` takes (a spy on the optimiser)."""
    seen: list[float] = []
    original = torch.optim.AdamW.step

    def spy(self, *args, **kwargs):
        seen.append(self.param_groups[0]["lr"])
        return original(self, *args, **kwargs)

    torch.optim.AdamW.step = spy
    try:
        method.fit(task)
    finally:
        torch.optim.AdamW.step = original
    return seen


@pytest.mark.parametrize("name", ["tip-adapter-f", "ape-t"])
def test_fine_tuning_anneals_the_cosine_every_batch_as_the_reference(name):
    # The authors' CosineAnnealingLR(optimizer, epochs * len(loader)) stepped after every batch:
    # batch t of epochs * iters runs at 0.5 * lr * (1 + cos(pi * t / (epochs * iters))).
    task = make_task(seed=1)  # 20 training images; batches of 7: 3 per epoch
    epochs, lr, iters = 4, 1e-3, 3
    options = {"channels": 10} if name == "ape-t" else {}
    seen = _learning_rates(create_method(name, epochs=epochs, lr=lr, batch_size=7, search_steps=(10, 5), **options),
                           task)
    reference = [0.5 * lr * (1 + math.cos(math.pi * t / (epochs * iters))) for t in range(epochs * iters)]
    assert seen == pytest.approx(reference, rel=1e-12)


def _brute_force_best(task: Task, keys: torch.Tensor, betas, alphas) -> float:
    """Best validation accuracy (%) over the (beta, alpha) grid for fixed keys, by a plain loop."""
    best = 0
    for beta in betas:
        for alpha in alphas:
            logits = tip_formula(task.val_features, keys, task.train_labels, task.text_weights, alpha, beta,
                                 task.logit_scale)
            best = max(best, int((logits.argmax(-1) == task.val_labels).sum()))
    return 100.0 * best / len(task.val_labels)


def test_tip_adapter_f_scores_each_epoch_by_its_alpha_beta_search():
    task = make_task(seed=1)
    torch.manual_seed(0)
    model = TipAdapterF(epochs=5, search_steps=(40, 10)).fit(task)
    info = model.fit_info_
    betas = [0.1 + i * (12.0 - 0.1) / 40 for i in range(40)]
    alphas = [0.1 + i * (10.0 - 0.1) / 10 for i in range(10)]
    initial_keys = F.normalize(task.train_features[:, 1:].mean(1), dim=-1)
    assert info["initial_val"] == _brute_force_best(task, initial_keys, betas, alphas)  # Tip-Adapter's search
    assert info["val_accuracy"] == _brute_force_best(task, model.keys_, betas, alphas)  # the chosen epoch's
    assert info["val_accuracy"] == max(info["initial_val"], *info["val_per_epoch"])
    assert len(info["val_per_epoch"]) == len(info["alpha_per_epoch"]) == len(info["beta_per_epoch"]) == 5
    if info["best_epoch"] >= 0:
        e = info["best_epoch"]
        assert (model.alpha_, model.beta_) == (info["alpha_per_epoch"][e], info["beta_per_epoch"][e])
    torch.testing.assert_close(model.logits(task.val_features),
                               tip_formula(task.val_features, model.keys_, task.train_labels, task.text_weights,
                                           model.alpha_, model.beta_, MINI_SCALE))


def test_fine_tuning_never_ends_below_tip_adapter_on_validation():
    # a learning rate that wrecks the keys: the untrained cache (epoch -1) is kept, i.e. Tip-Adapter
    task = make_task(seed=3)
    torch.manual_seed(0)
    wrecked = TipAdapterF(epochs=3, lr=5.0, search_steps=(40, 10)).fit(task)
    tip = TipAdapter(search_steps=(40, 10)).fit(task)
    assert wrecked.fit_info_["best_epoch"] == -1
    assert max(wrecked.fit_info_["val_per_epoch"]) < wrecked.fit_info_["initial_val"]
    torch.testing.assert_close(wrecked.logits(task.val_features), tip.logits(task.val_features))
    # without the initial candidate an epoch is always chosen (the authors' behaviour)
    torch.manual_seed(0)
    assert TipAdapterF(epochs=3, lr=5.0, search_steps=(40, 10), keep_initial=False).fit(task).fit_info_["best_epoch"] >= 0


def test_ape_t_scores_each_epoch_by_its_alpha_beta_search():
    task = make_task(seed=3)
    torch.manual_seed(0)
    model = APET(epochs=3, channels=10, search_steps=(20, 5)).fit(task)
    info = model.fit_info_
    assert len(info["val_per_epoch"]) == 3 and -1 <= info["best_epoch"] < 3
    assert info["val_accuracy"] == max(info["initial_val"], *info["val_per_epoch"])
    x = F.normalize(task.val_features, dim=-1)  # the chosen epoch's search, rerun on its effective cache
    found = search_alpha_beta(model.config, x, Affinity(x @ model.keys_.T), task.val_labels, model.text_weights_,
                              model._values, MINI_SCALE)
    assert (found["alpha"], found["beta"], found["val_accuracy"]) == (model.alpha_, model.beta_, info["val_accuracy"])
