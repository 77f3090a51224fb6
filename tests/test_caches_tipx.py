"""TIP-X against its equations written out; brute-force search; folder and name-only support sets."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from conftest import COLOURS
from test_cache_keys import reference_keys, task_with_norms
from test_caches_tip import random_problem
from vlkit.caches import TipX
from vlkit.caches.support import name_only_support
from vlkit.data import load_image_folder
from vlkit.errors import DataError, VlkitError
from vlkit.methods.task import Task
from vlkit.protocols.fewshot import with_method_images
from search_reference import nearest_centre


def kl_matrix(queries, support, text, temperature=0.5):
    """KL(s(f_m) || s(F_n)) for every pair, one pair at a time."""
    out = torch.zeros(len(queries), len(support))
    for m, f in enumerate(queries):
        p = torch.softmax(f @ text.T / temperature, dim=-1)
        for n, k in enumerate(support):
            q = torch.softmax(k @ text.T / temperature, dim=-1)
            out[m, n] = (p * (p.log() - q.log())).sum()
    return out


def tipx_equation(f, keys, labels, text, kl, ranges, alpha, beta, gamma):
    """100 f W^T + alpha exp(-beta (1 - f F^T)) L + gamma (-rescale(KL)) L."""
    one_hot = torch.zeros(len(labels), text.shape[0])
    one_hot[torch.arange(len(labels)), labels] = 1.0
    kl_min, kl_max, aff_min, aff_max = ranges
    scaled = (kl - kl_min) / (kl_max - kl_min) * (aff_max - aff_min) + aff_min
    return (100.0 * f @ text.T + alpha * torch.exp(-beta * (1.0 - f @ keys.T)) @ one_hot
            + gamma * (-scaled) @ one_hot)


def test_tipx_logits_match_equation_with_ranges_fixed_on_validation():
    feats, labels, text, val, val_labels = random_problem()
    model = TipX(alpha=3.0, beta=4.0, gamma=0.7).fit(feats, labels, text, val, val_labels)
    keys = F.normalize(feats[:, 1:].mean(1), dim=-1)
    f = F.normalize(val, dim=-1)
    kl_val, aff_val = kl_matrix(f, keys, text), f @ keys.T
    ranges = (kl_val.min(), kl_val.max(), aff_val.min(), aff_val.max())
    torch.testing.assert_close(model.ranges_, torch.stack(ranges), rtol=1e-4, atol=1e-5)
    queries = F.normalize(torch.randn(6, text.shape[1]), dim=-1)
    expected = tipx_equation(queries, keys, labels, text, kl_matrix(queries, keys, text), ranges, 3.0, 4.0, 0.7)
    torch.testing.assert_close(model.logits(queries), expected, rtol=1e-4, atol=1e-3)
    # one query's prediction does not depend on the rest of its batch
    torch.testing.assert_close(model.logits(queries[:1]), model.logits(queries)[:1])


def test_tipx_on_raw_view_keys_matches_the_reference_in_float64():
    """SuS-X's tipx.py written out in float64: keys from the raw views (Tip-Adapter's cache), signatures
    softmax(f W^T / 0.5), KL(query || key) pair by pair, rescaled into the affinity range, logits (1e-5 relative)."""
    task, raw, val, labels = task_with_norms(seed=6)
    model = TipX(alpha=2.0, beta=5.0, gamma=0.9).fit(task)
    keys = reference_keys(raw).double()  # (N, D)
    text = task.text_weights.double()
    one_hot = torch.zeros(len(labels), text.shape[0], dtype=torch.float64)
    one_hot[torch.arange(len(labels)), labels] = 1.0

    def signatures(x):
        return torch.softmax(x @ text.T / 0.5, dim=-1)

    def kl(queries):
        p, q = signatures(queries), signatures(keys)
        return torch.stack([(p[m] * (p[m].log() - q.log())).sum(-1) for m in range(len(p))])  # (M, N)

    f_val = val.double() / val.double().norm(dim=-1, keepdim=True)
    kl_val, aff_val = kl(f_val), f_val @ keys.T
    queries = F.normalize(torch.randn(9, text.shape[1], generator=torch.Generator().manual_seed(1)), dim=-1)
    f = queries.double()
    scaled = (kl(f) - kl_val.min()) / (kl_val.max() - kl_val.min()) * (aff_val.max() - aff_val.min()) + aff_val.min()
    expected = (100.0 * f @ text.T + 2.0 * torch.exp(-5.0 * (1.0 - f @ keys.T)) @ one_hot
                + 0.9 * (-scaled) @ one_hot)
    torch.testing.assert_close(model.keys_.double(), keys, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(model.logits(queries).double(), expected, rtol=1e-5,
                               atol=1e-5 * expected.abs().max().item())


def test_tipx_search_picks_the_brute_force_point():
    feats, labels, text, val, val_labels = random_problem(seed=3)
    steps = (5, 20, 10)
    model = TipX(search_steps=steps).fit(feats, labels, text, val, val_labels)
    keys, f = model.keys_, F.normalize(val, dim=-1)
    kl = kl_matrix(f, keys, text)
    aff = f @ keys.T
    ranges = (kl.min(), kl.max(), aff.min(), aff.max())
    alphas = [0.1 + i * (50 - 0.1) / steps[0] for i in range(steps[0])]
    betas = [1 + i * (50 - 1) / steps[1] for i in range(steps[1])]
    gammas = [0.1 + i * (30 - 0.1) / steps[2] for i in range(steps[2])]
    scored = []  # loop order alpha, beta, gamma; ties: vlkit's rule (nearest the grid's centre)
    for ia, alpha in enumerate(alphas):
        for ib, beta in enumerate(betas):
            for ig, gamma in enumerate(gammas):
                logits = tipx_equation(f, keys, labels, text, kl, ranges, alpha, beta, gamma)
                scored.append((int((logits.argmax(-1) == val_labels).sum()), (ia, ib, ig)))
    ia, ib, ig = nearest_centre(scored, steps)
    assert (model.alpha_, model.beta_, model.gamma_) == (alphas[ia], betas[ib], gammas[ig])


def test_name_only_support_retrieves_nearest_pool_images_per_class():
    feats, labels, text, val, val_labels = random_problem()
    pool = F.normalize(torch.randn(200, text.shape[1]), dim=-1)
    keys, support_labels = name_only_support(pool, text, per_class=3)
    expected = (text @ pool.T).topk(3, dim=-1).indices  # (C, 3)
    torch.testing.assert_close(keys, pool[expected.reshape(-1)])
    assert support_labels.tolist() == [c for c in range(5) for _ in range(3)]
    task = Task(classnames=[str(i) for i in range(5)], text_weights=text, train_features=feats,
                train_labels=labels, val_features=val, val_labels=val_labels, unlabeled_features=pool)
    model = TipX(support="name-only", support_per_class=3, search_steps=(2, 5, 2)).fit(task)
    assert model.fit_info_["support_size"] == 15
    with pytest.raises(VlkitError, match="unlabelled pool"):
        TipX(support="name-only").fit(feats, labels, text)
    with pytest.raises(VlkitError, match="support must be"):
        TipX(support="/no/such/folder").fit(feats, labels, text)


def _write_colour_images(root, classes, per_class=3, seed=0):
    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = np.clip(np.array(COLOURS[name])[None, None] + rng.normal(0, 20, (32, 32, 3)), 0, 255)
            Image.fromarray(img.astype(np.uint8)).save(root / name / f"{i}.png")


def test_folder_and_pool_support_with_the_tiny_backbone(colour_task, tiny_backbone, session_store, tmp_path):
    # the method names its folders; the caller encodes them from its store (the method opens none)
    def fit(**options):
        method = TipX(search_steps=(2, 4, 2), **options)
        return method.fit(with_method_images(colour_task, method, tiny_backbone, session_store))

    _write_colour_images(tmp_path / "support", ["red", "blue"])
    model = fit(support=str(tmp_path / "support"))
    assert model.fit_info_["support_size"] == 6
    assert sorted(model.values_.argmax(-1).tolist()) == [0, 0, 0, 2, 2, 2]  # red = 0, blue = 2
    support = load_image_folder(tmp_path / "support")
    torch.testing.assert_close(model.keys_, F.normalize(session_store.image_features(tiny_backbone, support), dim=-1))
    _write_colour_images(tmp_path / "bad", ["red"])
    (tmp_path / "bad" / "purple").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "bad" / "purple" / "x.png")
    with pytest.raises(DataError, match="not task classes"):
        fit(support=str(tmp_path / "bad"))
    flat = tmp_path / "pool"
    _write_colour_images(flat, list(COLOURS), per_class=2, seed=1)
    pooled = fit(support="name-only", pool=str(flat), support_per_class=2)
    assert pooled.fit_info_["support_size"] == 8
    assert "support_images" not in colour_task.extras  # the shared task is not changed
    with pytest.raises(VlkitError, match="must be encoded by the caller"):
        TipX(support=str(tmp_path / "support")).fit(colour_task)
    with pytest.raises(VlkitError, match="must be encoded by the caller"):
        TipX(support="name-only", pool=str(flat)).fit(colour_task)


def test_run_fewshot_encodes_the_support_folder_from_its_store(tiny_backbone, colour_pool, colour_test,
                                                                session_store, tmp_path, monkeypatch):
    from vlkit.features.store import FeatureStore
    from vlkit.protocols.fewshot import run_fewshot

    _write_colour_images(tmp_path / "support", list(COLOURS), per_class=2)
    opened = []
    monkeypatch.setattr(FeatureStore, "__init__", lambda *a, **k: opened.append(1) or None)  # no new store
    result = run_fewshot(tiny_backbone, colour_pool, colour_test, "tip-x", shots=2, seed=0, store=session_store,
                         views=2, support=str(tmp_path / "support"), search_steps=(2, 4, 2))
    assert opened == [] and result["fit_info"]["support_size"] == 8
