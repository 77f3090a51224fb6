"""The contract every registered method joins automatically (DESIGN.md, Method)."""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.utils.validation import check_is_fitted

from contract_overrides import CONTRACT_OVERRIDES
from vlkit.errors import NotFittedError, ShapeError, VlkitError
from vlkit.methods import Method, create_method, list_methods, method_class
from vlkit.protocols.scoring import method_logits


def weights_digest(backbone) -> str:
    digest = hashlib.sha256()
    for key, tensor in sorted(backbone.model.state_dict().items()):
        digest.update(key.encode() + tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def fitted(name: str, task, seed: int = 0) -> Method:
    torch.manual_seed(seed)
    return create_method(name, **CONTRACT_OVERRIDES.get(name, {})).fit(task)


def test_registry_has_foundation_methods():
    assert {"zero-shot", "linear-probe"} <= set(list_methods())


def test_unknown_method_error_lists_known():
    with pytest.raises(VlkitError, match="unknown method 'nope'.*zero-shot"):
        create_method("nope")


@pytest.mark.parametrize("name", list_methods())
def test_unknown_option_is_rejected(name):
    with pytest.raises(VlkitError, match="unknown option"):
        create_method(name, not_an_option=1)


@pytest.mark.parametrize("name", list_methods())
def test_not_fitted_error(name, colour_task):
    x = colour_task.val_features
    with pytest.raises(NotFittedError):
        create_method(name).logits(x)


@pytest.mark.parametrize("name", list_methods())
def test_contract(name, colour_task, colour_adapt_task, colour_test, tiny_backbone, session_store, tmp_path):
    klass = method_class(name)
    if klass.task_kind == "adaptation":
        colour_task = colour_adapt_task
    assert klass.family and klass.paper, "a method names its family and its paper"
    before = weights_digest(tiny_backbone)
    method = fitted(name, colour_task)
    assert isinstance(method, Method)
    # encoder untouched (bit for bit) and frozen
    assert weights_digest(tiny_backbone) == before
    assert not any(p.requires_grad for p in tiny_backbone.model.parameters())
    logits = method_logits(method, tiny_backbone, colour_test, session_store)
    assert logits.shape == (len(colour_test), colour_task.num_classes)
    assert torch.isfinite(logits).all()
    assert isinstance(method.trainable_parameters, int) and method.trainable_parameters >= 0
    # the artifact holds the learned state only, never the encoder
    state_numel = sum(t.numel() for t in method.state().values())
    encoder_numel = sum(p.numel() for p in tiny_backbone.model.parameters())
    assert state_numel < encoder_numel / 2
    # save / load round trip gives the same logits exactly
    out = method.save(tmp_path / "artifact", backbone_fingerprint=tiny_backbone.fingerprint)
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "state.safetensors"]
    loaded = Method.load(out, tiny_backbone)
    assert torch.equal(method_logits(loaded, tiny_backbone, colour_test, session_store), logits)
    # determinism under a seed
    again = fitted(name, colour_task)
    assert torch.equal(method_logits(again, tiny_backbone, colour_test, session_store), logits)


@pytest.mark.parametrize("name", [n for n in list_methods() if method_class(n).input_kind == "features"])
def test_wrong_feature_width_is_a_clear_error(name, colour_task, colour_adapt_task):
    if method_class(name).task_kind == "adaptation":
        colour_task = colour_adapt_task
    method = fitted(name, colour_task)
    with pytest.raises(ShapeError, match="another backbone"):
        method.logits(torch.randn(3, colour_task.dim + 1))


# ---- the scikit-learn contract (DESIGN.md, Method); tests/test_sklearn_contract.py has GridSearchCV ----
ARRAY_METHODS = [n for n in list_methods() if method_class(n).accepts_arrays()]


def learned(method: Method) -> list[str]:
    """Public attributes ending in ``_`` (scikit-learn's mark of a learned attribute)."""
    return sorted(a for a in vars(method) if a.endswith("_") and not a.startswith("_"))


def test_feature_level_methods_accept_arrays():
    assert {"zero-shot", "linear-probe", "tip-adapter", "lp++"} <= set(ARRAY_METHODS)
    assert "coop" not in ARRAY_METHODS and "self-training-cache" not in ARRAY_METHODS


@pytest.mark.parametrize("name", list_methods())
def test_sklearn_params_clone_and_unfitted_state(name):
    options = CONTRACT_OVERRIDES.get(name, {})
    method = create_method(name, **options)
    assert learned(method) == [], "__init__ stores arguments only"
    with pytest.raises(SklearnNotFittedError):
        check_is_fitted(method)
    with pytest.raises(NotFittedError, match="not fitted yet.*classnames_.*call fit"):
        method.classnames_
    params = method.get_params()
    assert set(params) == {f.name for f in dataclasses.fields(method.Config)} | {"text_weights"}
    for key, value in options.items():
        assert params[key] == value
    copy = clone(method)  # sklearn checks that __init__ stored every parameter unchanged
    assert type(copy) is type(method) and copy is not method and copy.config == method.config
    assert learned(copy) == []
    # set_params on a default instance reaches the same config; a round trip changes nothing
    default = create_method(name)
    assert default.set_params(**params) is default and default.config == method.config
    assert default.set_params(**default.get_params()).config == method.config
    with pytest.raises(VlkitError, match="unknown option.*not_an_option"):
        default.set_params(not_an_option=1)


@pytest.fixture(scope="module")
def colour_arrays(colour_task):
    """The colour task as numpy: train (N, V, D), labels (N,), text weights (C, D), validation."""
    t = colour_task
    return (t.train_features.numpy(), t.train_labels.numpy(), t.text_weights.numpy(),
            t.val_features.numpy(), t.val_labels.numpy())


@pytest.mark.parametrize("name", ARRAY_METHODS)
def test_sklearn_arrays_in_numpy_out(name, colour_task, colour_arrays):
    x, y, weights, vx, vy = colour_arrays
    torch.manual_seed(0)
    method = create_method(name, text_weights=weights, **CONTRACT_OVERRIDES.get(name, {}))
    assert method.fit(x, y, val_features=vx, val_labels=vy) is method
    check_is_fitted(method)
    assert {"classnames_", "dim_", "fit_info_"} <= set(learned(method))
    # arrays give the numbers the Task path gives (same seed), and the fit argument equals the parameter;
    # arrays carry no backbone: the Task.from_arrays defaults (logit scale 100, no text encoder)
    plain = dataclasses.replace(colour_task, backbone=None, logit_scale=100.0)
    reference = fitted(name, plain).logits(colour_task.val_features)
    logits = method.logits(vx)
    assert isinstance(logits, torch.Tensor) and torch.equal(logits, reference)
    pred = method.predict(vx)
    assert isinstance(pred, np.ndarray) and pred.dtype == np.int64
    np.testing.assert_array_equal(pred, logits.argmax(dim=-1).numpy())
    proba = method.predict_proba(vx)
    assert isinstance(proba, np.ndarray) and proba.shape == (len(vx), len(weights))
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(method.decision_function(vx), logits.numpy())
    assert method.score(vx, vy) == pytest.approx(float((pred == vy).mean()))
    np.testing.assert_array_equal(method.classes_, np.arange(len(weights)))
    # tensors in, tensors out
    assert torch.equal(method.predict(torch.from_numpy(vx)), logits.argmax(dim=-1))
    # a clone of a fitted method is unfitted, with the same parameters
    copy = clone(method)
    assert learned(copy) == [] and copy.config == method.config
    with pytest.raises(NotFittedError):
        copy.predict(vx)
    with pytest.raises(ShapeError, match="text_weights"):
        create_method(name).fit(x, y)
