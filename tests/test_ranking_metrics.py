"""Each transferability metric against a plain transcription of its paper's formula (loops, no shortcuts)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import minimize

from vlkit.errors import DataError, ShapeError
from vlkit.ranking import gbc, hscore, leep, logme, nce, nleep, otce, sfda, shrinkage_hscore, text_separation
from vlkit.ranking.leep import gmm_posteriors
from vlkit.ranking.logme import logme_fixed_point
from vlkit.ranking.otce import otce_parts

REL = 1e-6


def sample(n_per_class: int = 6, classes: int = 3, dim: int = 5, seed: int = 0, signal: float = 1.0):
    """Small random features with some class structure, and their labels."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    centres = rng.normal(size=(classes, dim))
    return centres[labels] * signal + rng.normal(size=(len(labels), dim)), labels


def close(value: float, reference: float) -> bool:
    return abs(value - reference) <= REL * max(abs(reference), 1e-12)


# --- LogME -------------------------------------------------------------------------------------------

def evidence_dense(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """You et al. 2021, Eq. 2, with the D x D matrix A written out, divided by N."""
    n, d = f.shape
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    value = (n / 2 * math.log(beta) + d / 2 * math.log(alpha) - n / 2 * math.log(2 * math.pi)
             - beta / 2 * float(((f @ m - y) ** 2).sum()) - alpha / 2 * float(m @ m)
             - 0.5 * np.linalg.slogdet(a)[1])
    return value / n


def test_logme_fixed_point_is_the_exact_maximum_of_the_evidence() -> None:
    f, labels = sample(10, 3, 4, seed=1, signal=2.0)  # N = 30 > D = 4: an interior maximum
    for c in range(3):
        y = (labels == c).astype(float)
        best = minimize(lambda p: -evidence_dense(f, y, math.exp(p[0]), math.exp(p[1])), x0=[0.0, 0.0],
                        method="Nelder-Mead", options={"xatol": 1e-11, "fatol": 1e-15, "maxiter": 20000})
        evidence, alpha, beta = logme_fixed_point(f, y[:, None])
        assert close(float(evidence[0]), -best.fun)
        assert close(float(evidence[0]), evidence_dense(f, y, float(alpha[0]), float(beta[0])))
        assert abs(math.log(alpha[0]) - best.x[0]) < 1e-3 and abs(math.log(beta[0]) - best.x[1]) < 1e-3
        grid = [evidence_dense(f, y, alpha[0] * a, beta[0] * b) for a in (0.9, 1.1) for b in (0.9, 1.1)]
        assert max(grid) < evidence[0]  # nothing around it is higher


def evidence_samples(f: np.ndarray, y: np.ndarray, alpha: float, beta: float) -> float:
    """The same evidence as the marginal of y ~ N(0, F F^T / alpha + I / beta), divided by N (any beta)."""
    n = len(y)
    cov = f @ f.T / alpha + np.eye(n) / beta
    return (-0.5 * np.linalg.slogdet(cov)[1] - 0.5 * y @ np.linalg.solve(cov, y) - n / 2 * math.log(2 * math.pi)) / n


@pytest.mark.parametrize("seed,signal,where", [(0, 2.0, "inside"), (4, 0.5, "beta=inf"), (0, 0.5, "alpha=inf")])
def test_logme_fewer_images_than_dimensions(seed: int, signal: float, where: str) -> None:
    """N = 6 < D = 8: y lies in F's column space; the maximum is inside, at beta -> inf or at alpha -> inf."""
    f, labels = sample(2, 3, 8, seed=seed, signal=signal)
    y = (labels == 0).astype(float)
    evidence, alpha, beta = logme_fixed_point(f, y[:, None])
    assert (bool(np.isinf(alpha[0])), bool(np.isinf(beta[0]))) == (where == "alpha=inf", where == "beta=inf")
    # the exact maximiser over (log alpha, log beta), beta up to e^30, by a dense grid then Nelder-Mead
    grid = [(a, b) for a in np.linspace(-5, 30, 141) for b in np.linspace(-5, 30, 141)]
    start = max(grid, key=lambda p: evidence_samples(f, y, math.exp(p[0]), math.exp(p[1])))
    best = minimize(lambda p: -evidence_samples(f, y, math.exp(min(p[0], 30.0)), math.exp(min(p[1], 30.0))),
                    x0=list(start),
                    method="Nelder-Mead", options={"xatol": 1e-11, "fatol": 1e-15, "maxiter": 20000})
    assert close(float(evidence[0]), -best.fun)
    if where == "inside":
        assert close(float(evidence[0]), evidence_dense(f, y, float(alpha[0]), float(beta[0])))


def test_logme_is_the_mean_over_classes() -> None:
    f, labels = sample(10, 3, 4, seed=3, signal=2.0)
    per_class = [logme_fixed_point(f, (labels == c).astype(float)[:, None])[0][0] for c in range(3)]
    assert close(logme(f, labels), float(np.mean(per_class)))


# --- LEEP, NCE, NLEEP ----------------------------------------------------------------------------------

def leep_loops(theta: np.ndarray, labels: np.ndarray) -> float:
    """Nguyen et al. 2020, Eq. 1-2, one sum at a time."""
    n, z_count = theta.shape
    classes = labels.max() + 1
    joint = [[sum(theta[i, z] for i in range(n) if labels[i] == y) / n for z in range(z_count)] for y in range(classes)]
    marginal = [sum(joint[y][z] for y in range(classes)) for z in range(z_count)]
    total = 0.0
    for i in range(n):
        total += math.log(sum(joint[labels[i]][z] / marginal[z] * theta[i, z] for z in range(z_count)))
    return total / n


def test_leep_matches_the_paper() -> None:
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(20, 4)) * 2
    theta = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = rng.integers(0, 3, 20)
    assert close(leep(theta, labels), leep_loops(theta, labels))


def test_nce_matches_the_paper() -> None:
    rng = np.random.default_rng(5)
    z, labels = rng.integers(0, 4, 30), rng.integers(0, 3, 30)
    n = len(z)
    value = 0.0
    for y in range(3):
        for s in range(4):
            p_yz = sum(1 for i in range(n) if labels[i] == y and z[i] == s) / n
            p_z = sum(1 for i in range(n) if z[i] == s) / n
            if p_yz > 0:
                value += p_yz * math.log(p_yz / p_z)
    assert close(nce(z, labels), value)
    assert nce(labels, labels) == 0.0  # a perfect source labelling: H(Y|Z) = 0


def test_nleep_is_leep_on_the_gmm_posteriors() -> None:
    f, labels = sample(8, 3, 6, seed=6, signal=3.0)
    posteriors = gmm_posteriors(f, 3, seed=0)
    assert posteriors.shape == (24, 3)
    assert close(nleep(f, labels, seed=0), leep_loops(posteriors, labels))


# --- H-score ---------------------------------------------------------------------------------------------

def test_hscore_matches_the_paper() -> None:
    f, labels = sample(8, 3, 4, seed=7)
    n, d = f.shape
    mean = f.mean(0)
    cov_f = sum(np.outer(f[i] - mean, f[i] - mean) for i in range(n)) / (n - 1)
    g = np.array([f[labels == labels[i]].mean(0) for i in range(n)])
    cov_g = sum(np.outer(g[i] - g.mean(0), g[i] - g.mean(0)) for i in range(n)) / (n - 1)
    assert close(hscore(f, labels), float(np.trace(np.linalg.inv(cov_f) @ cov_g)))


def test_shrinkage_hscore_matches_ledoit_wolf_written_out() -> None:
    f, labels = sample(4, 3, 10, seed=8)  # N = 12 < D = 10 + 1: the case shrinkage is for
    n, d = f.shape
    x = f - f.mean(0)
    s = sum(np.outer(x[i], x[i]) for i in range(n)) / n
    mu = np.trace(s) / d
    delta = ((s - mu * np.eye(d)) ** 2).sum() / d
    beta_bar = sum(((np.outer(x[i], x[i]) - s) ** 2).sum() for i in range(n)) / n ** 2 / d
    alpha = min(beta_bar, delta) / delta  # Ledoit & Wolf 2004, as scikit-learn estimates it
    cov_alpha = (1 - alpha) * s + alpha * mu * np.eye(d)
    g = np.array([f[labels == labels[i]].mean(0) for i in range(n)])
    cov_g = sum(np.outer(g[i] - g.mean(0), g[i] - g.mean(0)) for i in range(n)) / n
    assert close(shrinkage_hscore(f, labels), float(np.trace(np.linalg.inv(cov_alpha) @ ((1 - alpha) * cov_g))))


# --- GBC -------------------------------------------------------------------------------------------------

def test_gbc_matches_the_paper() -> None:
    f, labels = sample(7, 3, 4, seed=9)
    eps = 1e-6
    stats = []
    for c in range(3):
        rows = f[labels == c]
        mean = rows.mean(0)
        stats.append((mean, ((rows - mean) ** 2).mean(0) + eps))
    total = 0.0
    for i in range(3):
        for j in range(3):
            if i == j:
                continue
            (mi, vi), (mj, vj) = stats[i], stats[j]
            v = (vi + vj) / 2
            distance = sum((mi[k] - mj[k]) ** 2 / v[k] for k in range(4)) / 8 + 0.5 * math.log(
                np.prod(v) / math.sqrt(np.prod(vi) * np.prod(vj)))
            total += math.exp(-distance)
    assert close(gbc(f, labels), -total)


# --- SFDA ------------------------------------------------------------------------------------------------

def fisher_bayes_reference(x: np.ndarray, labels: np.ndarray, shrinkage: float | None) -> tuple[np.ndarray, float]:
    """Shao et al. 2022, Eq. 3-6 through the generalised eigenproblem (all directions kept, as the code)."""
    from scipy.linalg import eigh

    n, d = x.shape
    classes = labels.max() + 1
    priors = np.array([np.mean(labels == c) for c in range(classes)])
    means = np.array([x[labels == c].mean(0) for c in range(classes)])
    within = sum(priors[c] * np.cov(x[labels == c].T, bias=True) for c in range(classes))
    if shrinkage is None:
        shrinkage = max(math.exp(-5 * np.linalg.eigvalsh(within).max()), 1e-10)
    reg_w = (1 - shrinkage) * within + shrinkage * np.trace(within) / d * np.eye(d)
    total = np.cov(x.T, bias=True)
    reg_t = (1 - shrinkage) * total + shrinkage * np.trace(total) / d * np.eye(d)
    evals, evecs = eigh(reg_t - reg_w, reg_w)
    evecs = evecs[:, np.argsort(evals)[::-1]]
    coef = means @ evecs @ evecs.T
    scores = np.zeros((n, classes))
    for i in range(n):
        for c in range(classes):
            scores[i, c] = x[i] @ coef[c] - 0.5 * means[c] @ coef[c] + math.log(priors[c])
    probs = np.exp(scores - scores.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True), shrinkage


def test_sfda_matches_the_paper() -> None:
    f, labels = sample(8, 3, 4, seed=10, signal=0.7)
    probs, shrinkage = fisher_bayes_reference(f, labels, None)
    soft = np.exp(probs) / np.exp(probs).sum(1, keepdims=True)
    means = np.array([f[labels == c].mean(0) for c in range(3)])
    mixed = f.copy()
    for i in range(len(f)):
        others = np.mean([means[c] for c in range(3) if c != labels[i]], axis=0)
        p = soft[i, labels[i]]
        mixed[i] = p * f[i] + (1 - p) * others
    final, _ = fisher_bayes_reference(mixed, labels, shrinkage)
    assert close(sfda(f, labels), float(np.mean([final[i, labels[i]] for i in range(len(f))])))


# --- LOVM text score -------------------------------------------------------------------------------------

def test_text_separation_is_minus_lovm_inter_class_similarity() -> None:
    rng = np.random.default_rng(11)
    w = rng.normal(size=(4, 6))
    nearest = []
    for c in range(4):
        sims = [w[c] @ w[o] / np.linalg.norm(w[c]) / np.linalg.norm(w[o]) for o in range(4) if o != c]
        nearest.append(max(sims))
    assert close(text_separation(w), -float(np.mean(nearest)))


# --- OTCE ------------------------------------------------------------------------------------------------

def otce_reference(xs: np.ndarray, ys: np.ndarray, xt: np.ndarray, yt: np.ndarray) -> tuple[float, float]:
    """Tan et al. 2021, Eq. 2-5: the OT linear programme written out, then W and H(Yt | Ys)."""
    from scipy.optimize import linprog

    ns, nt = len(xs), len(xt)
    cost = np.array([[((xs[i] - xt[j]) ** 2).sum() for j in range(nt)] for i in range(ns)])
    rows = []
    for i in range(ns):
        rows.append([1.0 if k // nt == i else 0.0 for k in range(ns * nt)])
    for j in range(nt):
        rows.append([1.0 if k % nt == j else 0.0 for k in range(ns * nt)])
    b = [1 / ns] * ns + [1 / nt] * nt
    plan = linprog(cost.reshape(-1), A_eq=np.array(rows), b_eq=b, bounds=(0, None), method="highs").x.reshape(ns, nt)
    w = float((plan * cost).sum())
    h = 0.0
    for a in set(ys.tolist()):
        p_a = sum(plan[i, j] for i in range(ns) for j in range(nt) if ys[i] == a)
        for c in set(yt.tolist()):
            p_ac = sum(plan[i, j] for i in range(ns) for j in range(nt) if ys[i] == a and yt[j] == c)
            if p_ac > 1e-15:
                h -= p_ac * math.log(p_ac / p_a)
    return w, h


@pytest.mark.parametrize("n_target", [12, 9])  # equal sizes (assignment) and unequal (linear programme)
def test_otce_matches_the_paper(n_target: int) -> None:
    xs, ys = sample(4, 3, 3, seed=12)
    xt, yt = sample(4, 3, 3, seed=13)
    xt, yt = xt[:n_target], yt[:n_target]
    w, h = otce_reference(xs, ys, xt, yt)
    parts = otce_parts(xs, ys, xt, yt)
    assert close(parts["wasserstein"], w)
    assert abs(parts["conditional_entropy"] - h) <= 1e-6 * max(h, 1.0)
    assert otce(xs, ys, xt, yt) == -parts["conditional_entropy"]


# --- bad input -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("metric", [logme, hscore, shrinkage_hscore, gbc, sfda, nleep])
def test_one_class_is_one_clear_error(metric) -> None:
    f, _ = sample(4, 2, 3)
    with pytest.raises(DataError, match="fewer than 2 classes"):
        metric(f, np.zeros(len(f), dtype=int))


def test_wrong_shapes_are_one_clear_error() -> None:
    f, labels = sample(4, 2, 3)
    with pytest.raises(ShapeError, match=r"must be \(8,\)"):
        logme(f, labels[:5])
    with pytest.raises(ShapeError, match=r"must be \(N, D\)"):
        gbc(f[0], labels)
    with pytest.raises(ShapeError, match="same model"):
        otce(f, labels, np.ones((8, 4)), labels)
