"""Slow: on vlkit-mini + Fashion-MNIST, every 16-shot prompt learner beats zero-shot.

CPU schedule (a few minutes on 2 cores): CoOp and DeFo 50 epochs instead of 200, CoCoOp
2 epochs instead of 10; KgCoOp and MaPLe at their paper defaults; scored on the first
50 test images of each class. The paper-default table over 3 seeds comes from
``benchmarks/prompts_fewshot.py``.
"""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow
CPU_SCHEDULE = {"coop": {"epochs": 50}, "cocoop": {"epochs": 2}, "kgcoop": {}, "defo": {"epochs": 50}, "maple": {}}


@pytest.fixture(scope="module")
def mini_setup():
    import vlkit
    from vlkit.data import first_per_class
    from vlkit.data.offline import load_offline
    from vlkit.protocols.fewshot import run_fewshot
    from vlkit.features.store import FeatureStore

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")  # a load error fails the tests, never skips
    pool, test = load_offline("fashion-mnist", "train"), load_offline("fashion-mnist", "test")
    test = first_per_class(test, 50)
    store = FeatureStore()
    zero = run_fewshot(backbone, pool, test, "zero-shot", 16, 1, store=store)["top1"]
    return backbone, pool, test, store, zero


@pytest.mark.parametrize("name", sorted(CPU_SCHEDULE))
def test_16_shot_beats_zero_shot(name, mini_setup):
    from vlkit.protocols.fewshot import run_fewshot

    backbone, pool, test, store, zero = mini_setup
    result = run_fewshot(backbone, pool, test, name, 16, 1, store=store, **CPU_SCHEDULE[name])
    assert result["top1"] > zero + 2.0, (name, result["top1"], zero)
