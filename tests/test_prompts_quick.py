"""Quick schedules and the starting state as a selection candidate (issue 21, item 6)."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from vlkit.methods import create_method
from vlkit.protocols.presets import quick_settings


def hurt_task(task, method):
    """``task`` relabelled so that training can only hurt validation: validation labels are the
    untrained method's own predictions (it scores 100 %), training labels are shifted by one class."""
    with torch.no_grad():
        val_pred = method.logits(task.val_features).argmax(dim=-1)
    return dataclasses.replace(task, val_labels=val_pred, train_labels=(task.train_labels + 1) % task.num_classes)


@pytest.mark.parametrize("name", ["coop", "kgcoop"])
def test_quick_prompt_learner_returns_its_start_when_training_hurts_validation(name, colour_task):
    options = {**quick_settings(name), "ctx_init": "a photo of a"}
    start = create_method(name, **{**options, "epochs": 0}).fit(colour_task)
    task = hurt_task(colour_task, start)
    method = create_method(name, **options).fit(task)
    assert method.fit_info_["epochs"] == options["epochs"]
    assert method.fit_info_["best_epoch"] == -1 and method.fit_info_["best_val"] == 1.0
    assert torch.equal(method.net_.ctx, start.net_.ctx)
    torch.testing.assert_close(method.logits(colour_task.val_features), start.logits(colour_task.val_features))


def test_prompt_learner_keeps_a_better_trained_epoch(colour_task):
    """The candidate does not block learning: on the real labels a trained epoch is chosen."""
    method = create_method("coop", **quick_settings("coop"), ctx_init="a photo of a").fit(colour_task)
    assert method.fit_info_["best_epoch"] >= 0
