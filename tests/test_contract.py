"""The contract every registered method joins automatically (DESIGN.md, Method)."""
from __future__ import annotations

import hashlib

import pytest
import torch

from contract_overrides import CONTRACT_OVERRIDES
from vlkit.errors import NotFittedError, ShapeError, VlkitError
from vlkit.methods import Method, create_method, list_methods, method_class
from vlkit.protocols.fewshot import method_logits


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
