"""Slow: on vlkit-mini + Fashion-MNIST, every 16-shot prompt learner beats zero-shot."""
from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mini_setup(tmp_path_factory):
    import vlkit
    from vlkit.data.offline import load_offline
    from vlkit.errors import VlkitError
    from vlkit.store import FeatureStore

    try:
        backbone = vlkit.load_backbone("vlkit-mini", device="cpu")
        pool, test = load_offline("fashion-mnist", "train"), load_offline("fashion-mnist", "test")
    except VlkitError as exc:  # weights or data not available on this machine
        pytest.skip(str(exc))
    return backbone, pool, test, FeatureStore(tmp_path_factory.mktemp("store"), num_workers=0)


@pytest.fixture(scope="module")
def zero_shot_top1(mini_setup) -> float:
    from vlkit.pipeline import run_fewshot

    backbone, pool, test, store = mini_setup
    return run_fewshot(backbone, pool, test, "zero-shot", 16, 1, store=store)["top1"]


@pytest.mark.parametrize("name", ["coop", "cocoop", "kgcoop", "defo", "maple"])
def test_16_shot_beats_zero_shot(name, mini_setup, zero_shot_top1):
    from vlkit.pipeline import run_fewshot

    backbone, pool, test, store = mini_setup
    result = run_fewshot(backbone, pool, test, name, 16, 1, store=store)
    assert result["top1"] > zero_shot_top1 + 1.0, (name, result["top1"], zero_shot_top1)
