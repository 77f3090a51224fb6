"""Zero-shot and linear probe against plain references written out here."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression

from vlkit.methods import create_method
from vlkit.protocols.fewshot import run_fewshot
from vlkit.protocols.scoring import method_logits
from vlkit.features.text_weights import zero_shot_weights


def test_zero_shot_weights_are_the_template_ensemble(tiny_backbone):
    classes, templates = ["cat", "dog"], ["a photo of a {}.", "a drawing of a {}."]
    w = zero_shot_weights(tiny_backbone, classes, templates)
    for i, c in enumerate(classes):
        feats = tiny_backbone.encode_texts([t.format(c) for t in templates])  # (T, D), normalised
        mean = feats.mean(dim=0)
        assert torch.allclose(w[i], mean / mean.norm(), atol=1e-6)


def test_zero_shot_logits(colour_task):
    method = create_method("zero-shot", logit_scale=50.0).fit(colour_task)
    x = torch.randn(5, colour_task.dim)
    expected = 50.0 * (x / x.norm(dim=-1, keepdim=True)) @ colour_task.text_weights.T
    assert torch.allclose(method.logits(x), expected, atol=1e-5)


def test_linear_probe_selects_c_on_validation_like_a_plain_loop(colour_task):
    grid = [0.01, 1.0, 100.0]
    method = create_method("linear-probe", c_grid=grid, search_steps=0).fit(colour_task)
    x, y = colour_task.train_features[:, 0].numpy(), colour_task.train_labels.numpy()
    vx, vy = colour_task.val_features.numpy(), colour_task.val_labels.numpy()
    scores = [(LogisticRegression(C=c, max_iter=1000, random_state=0).fit(x, y).predict(vx) == vy).mean()
              for c in grid]
    # ties: the tied C nearest the middle (log10) of the tied span, then the smaller C
    tied = [np.log10(c) for c, s in zip(grid, scores) if s == max(scores)]
    middle = (min(tied) + max(tied)) / 2
    assert method.fit_info_["C"] == min((c for c, s in zip(grid, scores) if s == max(scores)),
                                        key=lambda c: (abs(np.log10(c) - middle), c))
    ref = LogisticRegression(C=method.fit_info_["C"], max_iter=1000, random_state=0).fit(x, y)
    assert torch.allclose(method.logits(torch.from_numpy(vx)), torch.from_numpy(ref.decision_function(vx)).float(),
                          atol=1e-4)


def test_linear_probe_beats_zero_shot_on_colours(tiny_backbone, colour_pool, colour_test, session_store):
    zs = run_fewshot(tiny_backbone, colour_pool, colour_test, "zero-shot", 4, 0, session_store, views=2)
    lp = run_fewshot(tiny_backbone, colour_pool, colour_test, "linear-probe", 4, 0, session_store, views=2)
    assert lp["top1"] >= 90 and lp["top1"] > zs["top1"]
    for key in ("trainable_parameters", "artifact_bytes", "fit_seconds", "peak_memory_bytes", "latency_ms_per_image"):
        assert lp[key] > 0 or key == "trainable_parameters" and lp[key] == 4 * 33
