"""Must-show accuracy on the real offline model: vlkit-mini on Fashion-MNIST, 16 shots, 3 seeds (slow).

Tip-Adapter, Tip-Adapter-F, APE and GDA each beat zero-shot, and Tip-Adapter-F beats
Tip-Adapter, on the mean test top-1 over seeds 1-3 (hyper-parameters and epochs chosen on
the few-shot validation sample only). The full 1/2/4/8/16-shot table comes from
``benchmarks/cache_fewshot.py``; the upgrade loop's rise from ``benchmarks/upgrade_loop.py``.
"""
from __future__ import annotations

import statistics

import pytest

pytestmark = pytest.mark.slow
SEEDS = (1, 2, 3)
METHODS = ("zero-shot", "tip-adapter", "tip-adapter-f", "ape", "gda")


@pytest.fixture(scope="module")
def mini_and_data():
    import vlkit
    from vlkit.data.offline import load_offline

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")  # ships with the package: a load error fails
    return backbone, load_offline("fashion-mnist", "train"), load_offline("fashion-mnist", "test")


def test_16_shot_caches_beat_zero_shot_and_finetuning_helps(mini_and_data):
    from vlkit.protocols.fewshot import run_fewshot
    from vlkit.features.store import FeatureStore

    backbone, pool, test = mini_and_data
    store = FeatureStore()
    top1 = {m: statistics.fmean(run_fewshot(backbone, pool, test, m, shots=16, seed=s, store=store)["top1"]
                                for s in SEEDS) for m in METHODS}
    for method in ("tip-adapter", "tip-adapter-f", "ape", "gda"):
        assert top1[method] > top1["zero-shot"], (method, top1)
    assert top1["tip-adapter-f"] > top1["tip-adapter"], top1
