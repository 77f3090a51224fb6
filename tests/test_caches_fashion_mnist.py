"""Must-show on the real offline model (issue 21, items 4 and 5): vlkit-mini on Fashion-MNIST.

At 1 shot Tip-Adapter (at vlkit-mini's own logit scale, 35.39 for v2, with ties broken toward the
grid's centre) changes zero-shot's test predictions and chooses alpha/beta strictly inside
its grid; on main (scale 100, first tied point) it chose the grid's corner. Tip-Adapter-F,
scoring each epoch by its own alpha/beta search, sees validation accuracy move between
epochs and chooses a trained epoch; on main (every epoch scored at alpha 2, beta 1) the
curve was flat and epoch 0 chosen almost always.
"""
from __future__ import annotations

import pytest
import torch

from vlkit.caches import TipAdapter, TipAdapterF
from vlkit.caches.common import linear_grid
from vlkit.methods import create_method
from vlkit.protocols.fewshot import build_task

SEEDS = (1, 2, 3)


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    import vlkit
    from vlkit.features.store import FeatureStore

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")  # ships with the package
    return backbone, FeatureStore(tmp_path_factory.mktemp("mini-store"), num_workers=0)


def test_one_shot_tip_adapter_moves_off_zero_shot_inside_its_grid(mini):
    from vlkit.data.offline import load_offline

    backbone, store = mini
    pool, test = load_offline("fashion-mnist-mini", "train"), load_offline("fashion-mnist-mini", "test")
    x = store.image_features(backbone, test)  # (500, D)
    config = TipAdapter.Config()
    betas = linear_grid(config.search_scale[0], config.search_steps[0], 0.1)
    alphas = linear_grid(config.search_scale[1], config.search_steps[1], 0.1)
    for seed in SEEDS:
        task = build_task(backbone, pool, shots=1, seed=seed, store=store)
        assert task.logit_scale == pytest.approx(backbone.logit_scale) and task.logit_scale < 50  # the model's, not 100
        zero_shot = create_method("zero-shot").fit(task)
        tip = TipAdapter().fit(task)
        assert tip.logit_scale_ == task.logit_scale
        assert (tip.predict(x) != zero_shot.predict(x)).sum() >= 10, seed
        assert betas[0] < tip.beta_ < betas[-1] and alphas[0] < tip.alpha_ < alphas[-1], (seed, tip.fit_info_)


@pytest.mark.slow
def test_tip_adapter_f_epoch_choice_means_something(mini):
    from vlkit.data.offline import load_offline

    backbone, store = mini
    pool = load_offline("fashion-mnist", "train")
    chosen, moving = [], 0
    for seed in SEEDS:
        task = build_task(backbone, pool, shots=16, seed=seed, store=store)
        info = TipAdapterF().fit(task).fit_info_
        curve = [info["initial_val"], *info["val_per_epoch"]]
        moving += len(set(curve)) > 1
        chosen.append(info["best_epoch"])
        assert info["val_accuracy"] == max(curve)
    assert any(epoch > 0 for epoch in chosen), chosen  # a trained epoch, not always the first or none
    assert moving >= 2, "validation accuracy should move between epochs"
