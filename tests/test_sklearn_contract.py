"""Feature-level methods as scikit-learn classifiers: GridSearchCV against a plain loop over the grid.

The references recompute each fold's accuracy without the method's scikit-learn plumbing:
Tip-Adapter from its equation (Zhang et al., ECCV 2022, Sec. 3.2) written out here, the
linear probe with scikit-learn's own LogisticRegression, LP++ by fitting it on the fold
directly. The folds are StratifiedKFold(3), which ``cv=3`` means for a classifier.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, StratifiedKFold, cross_val_score
from sklearn.utils.validation import check_is_fitted

from vlkit.caches import TipAdapter
from vlkit.errors import NotFittedError, ShapeError, VlkitError
from vlkit.methods import create_method

C, D, PER_CLASS = 4, 32, 12


def clusters(noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """X (N, D) float32 around C unit means, y (N,), and text weights (C, D) with classes 0 and 1
    swapped (zero-shot gets those two wrong, so the few-shot part has something to fix)."""
    rng = np.random.default_rng(seed)
    means = rng.normal(size=(C, D))
    means /= np.linalg.norm(means, axis=1, keepdims=True)
    y = np.repeat(np.arange(C), PER_CLASS)
    x = means[y] + noise * rng.normal(size=(len(y), D)) / np.sqrt(D)
    weights = means[[1, 0, 2, 3]] + 0.3 * rng.normal(size=(C, D)) / np.sqrt(D)
    return x.astype(np.float32), y, weights.astype(np.float32)


def tip_accuracy(x_train, y_train, x_test, y_test, weights, alpha: float, beta: float) -> float:
    """Tip-Adapter written out: 100 f W^T + alpha exp(-beta (1 - f F^T)) L, all rows L2-normalised."""
    def unit(a: np.ndarray) -> np.ndarray:
        a = a.astype(np.float64)
        return a / np.linalg.norm(a, axis=1, keepdims=True)

    f, keys, w = unit(x_test), unit(x_train), unit(weights)
    one_hot = np.eye(len(weights))[y_train]  # (N, C)
    logits = 100.0 * f @ w.T + alpha * np.exp(-beta * (1.0 - f @ keys.T)) @ one_hot
    return float((logits.argmax(axis=1) == y_test).mean())


def probe_accuracy(x_train, y_train, x_test, y_test, c: float) -> float:
    """scikit-learn's L-BFGS logistic regression, as the linear probe configures it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=c, max_iter=1000, random_state=0).fit(x_train, y_train)
    return float((model.predict(x_test) == y_test).mean())


def plain_loop(x, y, grid: list, accuracy) -> tuple[int, np.ndarray]:
    """Index of the first best grid value by mean fold accuracy, and the (G, folds) accuracies."""
    folds = list(StratifiedKFold(n_splits=3).split(x, y))
    scores = np.array([[accuracy(x[tr], y[tr], x[te], y[te], value) for tr, te in folds] for value in grid])
    return int(np.argmax(scores.mean(axis=1))), scores


def fold_scores(search: GridSearchCV) -> np.ndarray:
    """(G, folds) test accuracies of a finished search."""
    return np.stack([search.cv_results_[f"split{k}_test_score"] for k in range(search.n_splits_)], axis=1)


def test_grid_search_tip_adapter_matches_the_equation_loop():
    x, y, weights = clusters(noise=1.0)
    grid, beta = [1.0, 30.0, 100.0, 300.0], 5.0
    search = GridSearchCV(TipAdapter(beta=beta, text_weights=weights), {"alpha": grid}, cv=3,
                          error_score="raise").fit(x, y)
    best, scores = plain_loop(x, y, grid, lambda xt, yt, xe, ye, a: tip_accuracy(xt, yt, xe, ye, weights, a, beta))
    np.testing.assert_allclose(fold_scores(search), scores, atol=1e-12)
    assert len(set(scores.mean(axis=1))) > 1, "the grid must matter for the test to mean anything"
    assert search.best_params_ == {"alpha": grid[best]}
    # the refit model is Tip-Adapter on all the data with the chosen alpha
    refit = search.best_estimator_
    assert refit.alpha_ == grid[best] and refit.beta_ == beta
    assert refit.score(x, y) == pytest.approx(tip_accuracy(x, y, x, y, weights, grid[best], beta))


def test_grid_search_linear_probe_matches_logistic_regression_loop():
    x, y, weights = clusters(noise=3.0)
    grid = [0.001, 0.1, 10.0]
    search = GridSearchCV(create_method("linear-probe", text_weights=weights), {"C": grid}, cv=3,
                          error_score="raise").fit(x, y)
    best, scores = plain_loop(x, y, grid, lambda xt, yt, xe, ye, c: probe_accuracy(xt, yt, xe, ye, c))
    np.testing.assert_allclose(fold_scores(search), scores, atol=1e-12)
    assert len(set(scores.mean(axis=1))) > 1
    assert search.best_params_ == {"C": grid[best]}
    assert search.best_estimator_.fit_info_["C"] == grid[best]


def test_grid_search_lp_plus_plus_matches_a_plain_loop():
    x, y, weights = clusters(noise=1.0)
    grid = [1, 5, 40]

    def lp_accuracy(xt, yt, xe, ye, epochs: int) -> float:
        model = create_method("lp++", epochs=epochs).fit(xt, yt, weights)
        return float((model.logits(torch.from_numpy(xe)).argmax(dim=-1).numpy() == ye).mean())

    search = GridSearchCV(create_method("lp++", text_weights=weights), {"epochs": grid}, cv=3,
                          error_score="raise").fit(x, y)
    best, scores = plain_loop(x, y, grid, lp_accuracy)
    np.testing.assert_allclose(fold_scores(search), scores, atol=1e-12)
    assert len(set(scores.mean(axis=1))) > 1
    assert search.best_params_ == {"epochs": grid[best]}


def test_cross_val_score_takes_a_method():
    x, y, weights = clusters(noise=1.0)
    scores = cross_val_score(TipAdapter(alpha=100.0, beta=5.0, text_weights=weights), x, y, cv=3,
                             error_score="raise")
    folds = StratifiedKFold(n_splits=3).split(x, y)
    expected = [tip_accuracy(x[tr], y[tr], x[te], y[te], weights, 100.0, 5.0) for tr, te in folds]
    np.testing.assert_allclose(scores, expected, atol=1e-12)


def test_text_weights_argument_wins_over_the_parameter():
    x, y, weights = clusters(noise=1.0)
    wrong = weights[[3, 2, 1, 0]]
    by_param = TipAdapter(alpha=1.0, beta=5.0, text_weights=weights).fit(x, y)
    by_arg = TipAdapter(alpha=1.0, beta=5.0, text_weights=wrong).fit(x, y, weights)
    assert torch.equal(by_param.logits(x), by_arg.logits(x))
    with pytest.raises(ShapeError, match="needs the \\(C, D\\) text weights.*text_weights parameter"):
        TipAdapter().fit(x, y)


def test_predict_numpy_is_argmax_of_logits_and_tensor_stays_tensor():
    x, y, weights = clusters(noise=1.0)
    model = TipAdapter(alpha=30.0, beta=5.0).fit(x, y, weights)
    pred = model.predict(x)
    assert isinstance(pred, np.ndarray)
    np.testing.assert_array_equal(pred, model.logits(x).argmax(dim=-1).numpy())
    assert isinstance(model.predict(torch.from_numpy(x)), torch.Tensor)
    assert isinstance(model.predict(x.tolist()), np.ndarray)  # any array-like counts as an array
    assert model.score(x, y) == pytest.approx(float((pred == y).mean()))
    with pytest.raises(ShapeError, match="labels must be \\(48,\\)"):
        model.score(x, y[:-1])
    with pytest.raises(ShapeError, match="2 dimensions"):
        model.predict(x[0])


def test_learned_attributes_only_after_fit():
    x, y, weights = clusters(noise=1.0)
    model = TipAdapter(alpha=1.0, beta=2.0)
    assert not hasattr(model, "keys_") and not hasattr(model, "values_") and model.cache_size == 0
    with pytest.raises(NotFittedError, match="tip-adapter is not fitted yet: keys_ is learned by fit"):
        model.keys_
    with pytest.raises(NotFittedError, match="values_"):
        model.values_  # a property over learned state says the same
    with pytest.raises(NotFittedError, match="not fitted"):
        model.predict(x)
    model.fit(x, y, weights)
    check_is_fitted(model)
    assert model.keys_.shape == (len(y), D) and model.n_features_in_ == D
    with pytest.raises(AttributeError, match="no attribute 'nothing_'"):
        model.nothing_  # fitted: an unknown name is a plain AttributeError


def test_failed_fit_leaves_the_method_unfitted():
    x, y, weights = clusters(noise=1.0)
    method = create_method("self-training-cache")  # needs an unlabelled target: fails inside fit
    with pytest.raises(VlkitError, match="unlabelled target"):
        method.fit(x, y, weights)
    assert not any(a.endswith("_") and not a.startswith("_") for a in vars(method))


def test_set_params_validates_and_keeps_the_old_config_on_error():
    model = TipAdapter(alpha=1.0)
    with pytest.raises(VlkitError, match="alpha must be >= 0"):
        model.set_params(alpha=-1.0)
    assert model.config.alpha == 1.0
    assert model.set_params(alpha=2.0, beta=3.0).get_params()["alpha"] == 2.0 and model.config.beta == 3.0
    assert repr(model) == "TipAdapter(alpha=2.0, beta=3.0)"


def test_set_params_rederives_what_the_constructor_derives():
    tuner = create_method("lora")  # a tuner derives its towers and input kind from `tower`
    assert tuner.input_kind == "images"
    tuner.set_params(tower="text")
    assert tuner.towers == ("text",) and tuner.input_kind == "features"
    with pytest.raises(VlkitError, match="tower"):
        tuner.set_params(tower="nope")
    assert tuner.config.tower == "text"
