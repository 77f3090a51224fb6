"""APE and APE-T against the equations written out, the reference criterion loop, brute-force search."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from test_caches_tip import random_problem
from test_cache_keys import reference_keys, task_with_norms
from vlkit.caches import APE, APET
from vlkit.caches.ape import APEConfig, channel_criterion, select_channels
from search_reference import nearest_centre


def criterion_loop(text, keys, labels, w_sim, w_var):
    """The reference's loop: every pair of (class i, item m), (class j, item n) with i != j."""
    c, d = text.shape
    per_class = [torch.cat([text[i:i + 1], keys[labels == i]]) for i in range(c)]  # text + keys of class i
    sim, count = torch.zeros(d, dtype=torch.float64), 0
    for i in range(c):
        for j in range(c):
            if i == j:
                continue
            for a in per_class[i]:
                for b in per_class[j]:
                    sim += a.double() * b.double()
                    count += 1
    sim = sim / count
    return (-w_sim * sim + w_var * torch.var(text.double(), dim=0)).float()


def test_criterion_from_class_sums_equals_the_quadruple_loop():
    feats, labels, text, _, _ = random_problem(c=4, shots=3)
    keys = F.normalize(feats[:, 1:].mean(1), dim=-1)
    torch.testing.assert_close(channel_criterion(text, keys, labels, 0.7, 0.3),
                               criterion_loop(text, keys, labels, 0.7, 0.3))
    # unequal shots per class: the pair count generalises
    keep = torch.tensor([0, 1, 2, 3, 5, 6, 9, 10, 11])
    torch.testing.assert_close(channel_criterion(text, keys[keep], labels[keep], 0.2, 0.8),
                               criterion_loop(text, keys[keep], labels[keep], 0.2, 0.8))


def ape_equation(f, keys, labels, text, idx, alpha, beta, gamma):
    """APE's logits written out: refined channels, KL reweighting (bits), zero-shot residual."""
    c = text.shape[0]
    one_hot = torch.zeros(len(labels), c)
    one_hot[torch.arange(len(labels)), labels] = 1.0
    f = f / f.norm(dim=-1, keepdim=True)
    fr = f[:, idx] / f[:, idx].norm(dim=-1, keepdim=True)
    kr = keys[:, idx] / keys[:, idx].norm(dim=-1, keepdim=True)
    wr = text[:, idx] / text[:, idx].norm(dim=-1, keepdim=True)
    probs = torch.softmax(kr @ wr.T, dim=-1)
    kl = (one_hot * torch.log2((one_hot + 1e-6) / (probs + 1e-6))).sum(-1)  # (N,)
    values = one_hot * torch.exp(gamma * kl)[:, None]
    return 100.0 * f @ text.T + alpha * torch.exp(-beta * (1.0 - fr @ kr.T)) @ values


def test_ape_logits_match_equation():
    feats, labels, text, val, _ = random_problem()
    model = APE(alpha=2.5, beta=3.0, gamma=0.4, channels=16).fit(feats, labels, text)
    keys = F.normalize(feats[:, 1:].mean(1), dim=-1)
    crit = criterion_loop(text, keys, labels, 0.7, 0.3)
    idx = torch.topk(crit, 16).indices
    assert sorted(model.channels_.tolist()) == sorted(idx.tolist())
    torch.testing.assert_close(model.logits(val), ape_equation(val, keys, labels, text, idx, 2.5, 3.0, 0.4))
    assert APE(channels=0.5, alpha=1.0, beta=1.0, gamma=0.0).fit(feats, labels, text).channels_.numel() == 12


def test_ape_search_picks_the_brute_force_point():
    feats, labels, text, val, val_labels = random_problem(seed=2)
    steps = (30, 8, 5)
    model = APE(channels=16, search_steps=steps).fit(feats, labels, text, val, val_labels)
    keys = F.normalize(feats[:, 1:].mean(1), dim=-1)
    idx = model.channels_
    betas = [0.1 + i * (7.0 - 0.1) / steps[0] for i in range(steps[0])]
    alphas = [0.1 + i * (7.0 - 0.1) / steps[1] for i in range(steps[1])]
    gammas = [i * 0.5 / steps[2] for i in range(steps[2])]  # the ImageNet config's gamma scale
    scored = []  # loop order beta, alpha, gamma; ties: vlkit's rule (nearest the grid's centre)
    for ib, beta in enumerate(betas):
        for ia, alpha in enumerate(alphas):
            for ig, gamma in enumerate(gammas):
                logits = ape_equation(val, keys, labels, text, idx, alpha, beta, gamma)
                scored.append((int((logits.argmax(-1) == val_labels).sum()), (ib, ia, ig)))
    ib, ia, ig = nearest_centre(scored, steps)
    assert (model.beta_, model.alpha_, model.gamma_) == (betas[ib], alphas[ia], gammas[ig])
    assert model.fit_info_["grid_points"] == 30 * 8 * 5


def test_ape_t_logits_match_equation_and_count_parameters():
    feats, labels, text, val, val_labels = random_problem(seed=3)
    torch.manual_seed(0)
    model = APET(epochs=3, channels=10, search_steps=(20, 5)).fit(feats, labels, text, val, val_labels)
    res, weights, idx = model.residual_, model.value_weights_, model.channels_
    assert model.trainable_parameters == res.numel() + weights.numel() == 5 * 10 + len(labels)
    assert res.abs().sum() > 0  # trained away from its zero initialisation
    keys = F.normalize(feats[:, 1:].mean(1), dim=-1).clone()
    keys[:, idx] += res[labels]  # every key of class c gets R[c]
    new_text = text.clone()
    new_text[:, idx] += res  # and so does class c's text weight
    one_hot = torch.zeros(len(labels), 5)
    one_hot[torch.arange(len(labels)), labels] = 1.0
    f = val / val.norm(dim=-1, keepdim=True)
    expected = 100.0 * f @ new_text.T + model.alpha_ * torch.exp(-model.beta_ * (1 - f @ keys.T)) @ (
        one_hot * weights[:, None])
    torch.testing.assert_close(model.logits(val), expected)


def test_ape_defaults_are_the_authors_imagenet_config():
    """configs/imagenet.yaml of yangyangyang127/APE: 500 of 1024 channels, (0.7, 0.3), (7, 7, 0.5) x (200, 20, 5)."""
    cfg = APEConfig()
    assert (cfg.init_beta, cfg.init_alpha, cfg.init_gamma) == (1.0, 2.0, 0.1)
    assert cfg.channel_weights == (0.7, 0.3)
    assert cfg.search_scale == (7.0, 7.0, 0.5) and cfg.search_steps == (200, 20, 5)
    assert select_channels(torch.randn(1024), cfg.channels).numel() == 500  # RN50's width
    assert select_channels(torch.randn(512), cfg.channels).numel() == 250  # ViT-B's


def test_ape_on_raw_view_keys_matches_the_reference_pipeline():
    """Raw-view keys -> criterion loop -> top-Q channels -> refinement, KL reweighting, logits (1e-5 relative)."""
    task, raw, val, labels = task_with_norms(seed=5)
    text = task.text_weights
    model = APE(alpha=1.7, beta=2.2, gamma=0.3).fit(task)
    keys = reference_keys(raw)  # mean of the raw augmented passes, normalised
    q = round(text.shape[1] * 500 / 1024)
    idx = torch.topk(criterion_loop(text, keys, labels, 0.7, 0.3), q).indices
    assert sorted(model.channels_.tolist()) == sorted(idx.tolist())
    expected = ape_equation(val, keys, labels, text, idx, 1.7, 2.2, 0.3)
    torch.testing.assert_close(model.logits(val), expected, rtol=1e-5, atol=1e-5 * expected.abs().max().item())
