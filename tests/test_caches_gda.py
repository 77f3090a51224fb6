"""GDA against its equations written out (NumPy), and its alpha search against a loop."""
from __future__ import annotations

import numpy as np
import torch

from test_caches_tip import random_problem
from vlkit.caches import GDA


def gda_equation(feats, labels, text, f, alpha):
    """Class means, the shrunk shared covariance, Bayes' linear classifier, plus zero-shot."""
    x = feats.reshape(-1, feats.shape[-1]).double().numpy()
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y = labels.repeat_interleave(feats.shape[1]).numpy()
    c, d = text.shape
    mus = np.stack([x[y == k].mean(0) for k in range(c)])
    centred = x - mus[y]
    cov = np.cov(centred.T)  # divides by n - 1
    precision = d * np.linalg.pinv((len(x) - 1) * cov + np.trace(cov) * np.eye(d))
    w = mus @ precision
    b = np.log(1.0 / c) - 0.5 * np.einsum("cd,de,ce->c", mus, precision, mus)
    q = f.double().numpy()
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    return torch.from_numpy(100.0 * q @ text.double().numpy().T + alpha * (q @ w.T + b)).float()


def test_gda_logits_match_equation():
    feats, labels, text, val, _ = random_problem()
    model = GDA(alpha=0.3).fit(feats, labels, text)
    torch.testing.assert_close(model.logits(val), gda_equation(feats, labels, text, val, 0.3), rtol=1e-4, atol=1e-3)
    assert model.trainable_parameters == 0


def test_gda_alpha_search_picks_the_loop_choice():
    grid = [1e-4, 1e-3, 1e-2, 0.1, 1.0, 10.0, 100.0]
    for seed in range(3):
        feats, labels, text, val, val_labels = random_problem(seed=seed, shots=2)
        model = GDA().fit(feats, labels, text, val, val_labels)
        best, choice = -1, None
        for alpha in grid:
            logits = 100.0 * torch.nn.functional.normalize(val, dim=-1) @ text.T + alpha * model._gda(
                torch.nn.functional.normalize(val, dim=-1))
            acc = int((logits.argmax(-1) == val_labels).sum())
            if acc > best:
                best, choice = acc, alpha
        assert model.alpha_ == choice
