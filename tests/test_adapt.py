"""Domain adaptation: target labels are read only for the final score, by every method."""
from __future__ import annotations

import pytest
import torch

from contract_overrides import CONTRACT_OVERRIDES
from conftest import colour_dataset
from vlkit.protocols.adaptation import run_adapt
from vlkit.data.guard import HiddenLabelDataset, LabelLeakError
from vlkit.apps.commands import ADAPT_BASELINES
from vlkit.methods import list_methods, method_class

ADAPT_METHODS = [m for m in list_methods() if method_class(m).task_kind == "adaptation"]
GUARDED = [m for m in ADAPT_BASELINES if m in list_methods()] + ADAPT_METHODS


class TripwireDataset(HiddenLabelDataset):
    """Counts when labels are revealed; reading them before that raises."""

    reveals = 0

    def reveal(self):
        TripwireDataset.reveals += 1
        return super().reveal()


def test_hidden_labels_raise_until_revealed():
    data = HiddenLabelDataset(colour_dataset(2))
    with pytest.raises(LabelLeakError):
        data.labels
    with pytest.raises(LabelLeakError):
        data.subset([0], "peek")
    with pytest.raises(LabelLeakError):
        data.class_counts()
    assert all(label == 0 for _, label in data.items)  # items carry no labels either
    assert data.reveal() == colour_dataset(2).labels


@pytest.mark.parametrize("name", GUARDED)
def test_every_adaptation_method_passes_the_label_guard(name, tiny_backbone, session_store):
    source = (colour_dataset(8, seed=0, name="src"), colour_dataset(3, seed=5, name="src-val"))
    target_train, target_test = TripwireDataset(colour_dataset(6, seed=7, name="tgt")), TripwireDataset(
        colour_dataset(4, seed=8, name="tgt-test"))
    TripwireDataset.reveals = 0
    result = run_adapt(tiny_backbone, source, (target_train, target_test), name, seed=0, store=session_store,
                       views=2, **CONTRACT_OVERRIDES.get(name, {}))
    assert 0 <= result["top1"] <= 100
    assert target_test._revealed  # revealed once, by the harness, after fit
    if result.get("pseudo_labels") is not None:
        assert 0 <= result["pseudo_label_precision"] <= 100


def test_source_and_target_classes_must_match(tiny_backbone, session_store):
    source = (colour_dataset(4), colour_dataset(2, seed=3))
    other = colour_dataset(4, seed=9)
    other.classnames = ["a", "b", "c", "d"]
    with pytest.raises(Exception, match="classes differ"):
        run_adapt(tiny_backbone, source, (other, other), "zero-shot", store=session_store, views=1)
