"""Issue 19: full fine-tuning / WiSE-FT, LST, Head2Toe, the per-layer store and training memory."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import vlkit
from vlkit.features.layer_features import layer_tokens
from vlkit.features.store import FeatureStore
from vlkit.methods import create_method
from vlkit.methods.intermediate.head2toe import feature_scores, group_lasso, select_features
from vlkit.protocols.fewshot import with_method_images
from vlkit.protocols.scoring import measure


def images_of(backbone, dataset) -> torch.Tensor:
    return torch.stack([backbone.preprocess(dataset.image(i)) for i in range(len(dataset))])  # (N, 3, H, W)


def zero_shot_logits(backbone, task, x) -> torch.Tensor:
    return backbone.logit_scale * backbone.encode_images(x) @ task.text_weights.T  # (N, C)


def fresh_lst(backbone, task):
    """An LST at its initialisation (as fit builds it, before any step)."""
    method = create_method("lst")
    method.classnames_, method.dim_, method.fit_info_ = list(task.classnames), task.dim, {}
    method.logit_scale_, method.text_weights_ = float(backbone.logit_scale), task.text_weights.float()
    method.side_ = method.build(backbone)
    return method


# ---- identity at initialisation ------------------------------------------------------------------
def test_lst_gates_closed_is_zero_shot(tiny_backbone, colour_task, colour_test):
    method = fresh_lst(tiny_backbone, colour_task)
    assert torch.equal(method.side_.up.weight, torch.zeros_like(method.side_.up.weight))
    assert torch.allclose(method.side_.gates(), torch.full((2,), 0.5))  # sigmoid(0 / T): the paper's start
    x = images_of(tiny_backbone, colour_test)
    torch.testing.assert_close(method.logits(x), zero_shot_logits(tiny_backbone, colour_task, x), atol=1e-5, rtol=0)


def test_wise_ft_ends_are_zero_shot_and_fine_tuned(tiny_backbone, colour_task, colour_test):
    no_val = dataclasses.replace(colour_task, val_features=None, val_labels=None)  # no selection: same end point
    options = {"iters_per_shot": 2, "val_checks": 2, "batch_size": 8, "lr": 1e-3}
    torch.manual_seed(0)
    wise = create_method("wise-ft", **options).fit(no_val)
    torch.manual_seed(0)
    full = create_method("full-finetune", **options).fit(no_val)
    x = images_of(tiny_backbone, colour_test)
    assert wise.fit_info_["alpha"] == 0.5  # no validation: the paper's 0.5
    wise.mix(0.0)
    torch.testing.assert_close(wise.logits(x), zero_shot_logits(tiny_backbone, colour_task, x), atol=1e-4, rtol=0)
    wise.mix(1.0)
    assert torch.equal(wise.logits(x), full.logits(x))
    assert not torch.allclose(full.logits(x), zero_shot_logits(tiny_backbone, colour_task, x), atol=1e-3)


def test_wise_ft_alpha_is_chosen_on_validation_and_saved(tiny_backbone, colour_task, colour_test, tmp_path):
    torch.manual_seed(0)
    wise = create_method("wise-ft", iters_per_shot=2, val_checks=2, batch_size=8, lr=1e-3,
                         alphas=[0.0, 0.3, 1.0]).fit(colour_task)
    scores = {float(a): s for a, s in wise.fit_info_["alpha_val"].items()}
    best = max(scores.values())
    assert scores[wise.alpha_] == best and set(scores) == {0.0, 0.3, 1.0}
    loaded = vlkit.Method.load(wise.save(tmp_path / "w", tiny_backbone.fingerprint), tiny_backbone)
    x = images_of(tiny_backbone, colour_test)
    assert loaded.alpha_ == wise.alpha_ and torch.equal(loaded.logits(x), wise.logits(x))


def test_full_finetune_trains_every_image_tower_weight(tiny_backbone, colour_task):
    torch.manual_seed(0)
    method = create_method("full-finetune", iters_per_shot=1, val_checks=1, batch_size=8).fit(colour_task)
    tower = sum(p.numel() for p in tiny_backbone.model.visual.parameters())
    head = colour_task.num_classes * colour_task.dim
    assert method.trainable_parameters == tower + head


# ---- LST and Head2Toe: the store instead of the tower, no gradient into it ----------------------------
class CountingTower:
    """Counts forward passes of the image tower (patched on the instance)."""

    def __init__(self, backbone) -> None:
        self.visual, self.calls = backbone.model.visual, 0
        self.original = self.visual.forward

    def __enter__(self):
        def counted(*args, **kwargs):
            self.calls += 1
            return self.original(*args, **kwargs)

        self.visual.forward = counted
        return self

    def __exit__(self, *exc) -> None:
        del self.visual.forward


@pytest.mark.parametrize("name", ["lst", "head2toe"])
def test_training_reads_the_store_not_the_tower(name, tiny_backbone, colour_task, session_store):
    method = create_method(name, epochs=2)
    task = with_method_images(colour_task, method, tiny_backbone, session_store)
    views = colour_task.train_features.shape[1]
    assert task.extras["layer_features"]["train"].shape == (len(colour_task.train_labels), views, 2, 2, 32)
    with CountingTower(tiny_backbone) as tower:
        method.fit(task)
    assert tower.calls == 0
    with CountingTower(tiny_backbone) as tower:  # without stored layers the method encodes them itself
        create_method(name, epochs=2).fit(colour_task)
    assert tower.calls > 0


@pytest.mark.parametrize("name", ["lst", "head2toe"])
def test_no_gradient_reaches_the_backbone(name, colour_task, colour_test):
    backbone = vlkit.load_backbone("test-tiny", device="cpu")
    task = dataclasses.replace(colour_task, backbone=backbone)
    for p in backbone.model.parameters():
        p.requires_grad_(True)  # would collect a gradient if one flowed back into the tower
    torch.manual_seed(0)
    method = create_method(name, epochs=2).fit(task)
    x = images_of(backbone, colour_test)
    final, layers = layer_tokens(backbone, x)
    loss = method.head_logits(layers, torch.nn.functional.normalize(final, dim=-1)).logsumexp(-1).sum()
    if name == "lst":
        loss.backward()
        assert any(p.grad is not None for p in method.side_.parameters())
    assert all(p.grad is None for p in backbone.model.parameters())
    assert not final.requires_grad and not layers.requires_grad


# ---- Head2Toe's group lasso against a plain transcription ----------------------------------------------
def test_group_lasso_and_selection_match_a_plain_transcription():
    rng = np.random.default_rng(0)
    weight = rng.normal(size=(7, 3)).astype(np.float32)
    weight[4] = weight[1]  # a tie: the lower index wins
    norms = [float(np.sqrt(sum(v * v for v in row))) for row in weight]
    assert float(group_lasso(torch.from_numpy(weight))) == pytest.approx(sum(norms), rel=1e-6)
    np.testing.assert_allclose(feature_scores(torch.from_numpy(weight)).numpy(), norms, rtol=1e-6)
    ranked = sorted(range(7), key=lambda j: (-norms[j], j))
    for fraction in (0.1, 0.3, 0.5, 1.0):
        k = max(1, round(fraction * 7))
        assert select_features(torch.tensor(norms), fraction).tolist() == sorted(ranked[:k])


def test_group_lasso_keeps_the_informative_features():
    """Two features carry the label, 30 are noise: the lasso head ranks the two first."""
    gen = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 3
    x = torch.randn(60, 1, 32, generator=gen)
    x[:, 0, 5] += 3.0 * (labels == 1)
    x[:, 0, 17] += 3.0 * (labels == 2)
    method = create_method("head2toe", epochs=60, lasso=1e-2)
    method.classnames_, method._device = ["a", "b", "c"], torch.device("cpu")
    head, _ = method._train_head(x, labels, None, 1e-2, seed=0)
    assert select_features(feature_scores(head.weight.T), 2 / 32).tolist() == [5, 17]


# ---- the per-layer store -------------------------------------------------------------------------
def test_layer_features_are_cached_once_per_layer(tiny_backbone, colour_test, tmp_path):
    store = FeatureStore(tmp_path, num_workers=0)
    first = store.layer_features(tiny_backbone, colour_test)  # (N, depth, 2, W)
    _, direct = layer_tokens(tiny_backbone, images_of(tiny_backbone, colour_test))
    assert first.shape == (len(colour_test), 2, 2, 32)
    torch.testing.assert_close(first, direct, atol=2e-3, rtol=2e-3)  # float16 on disk
    with CountingTower(tiny_backbone) as tower:
        again = store.layer_features(tiny_backbone, colour_test, layers=[-1])
    assert tower.calls == 0 and torch.equal(again[:, 0], first[:, 1])
    entry = store.layer_entry_dir(tiny_backbone, colour_test, 0, 1)
    path = entry / "tokens-00000.npy"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes: the checksum catches it
    path.write_bytes(bytes(data))
    with CountingTower(tiny_backbone) as tower:
        repaired = store.layer_features(tiny_backbone, colour_test)
    assert tower.calls > 0 and torch.equal(repaired, first)
    with pytest.raises(vlkit.VlkitError, match="out of range"):
        store.layer_features(tiny_backbone, colour_test, layers=[2])


# ---- training memory -------------------------------------------------------------------------------
def test_training_memory_is_the_peak_above_the_start():
    with measure("cpu") as cost:
        block = np.ones(64 * 2**20 // 8)  # 64 MiB touched
        del block
    assert cost["train_memory_bytes"] >= 48 * 2**20
    assert cost["peak_memory_bytes"] - cost["train_memory_bytes"] > 0  # the loaded process is not counted


def test_results_carry_training_memory_per_image(tiny_backbone, colour_pool, colour_test, session_store):
    result = vlkit.run_fewshot(tiny_backbone, colour_pool, colour_test, "lst", 2, 0, session_store, views=1,
                               epochs=1)
    assert result.train_memory_bytes is not None
    assert result.train_memory_per_image_bytes == pytest.approx(result.train_memory_bytes / 32)
