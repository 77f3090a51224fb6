"""Slow: on vlkit-mini with Fashion-MNIST at 16 shots every adapter and tuner beats zero-shot."""
from __future__ import annotations

import pytest
import torch

import vlkit
from vlkit.backbones import offline_models
from vlkit.methods import create_method
from vlkit.pipeline import run_fewshot

pytestmark = pytest.mark.slow

CELLS = [("clip-adapter", {}), ("zs-linear-probe", {}), ("clap", {}), ("lp++", {}),
         ("lora", {}), ("prefix-tuning", {}), ("vpt-shallow", {}), ("vpt-deep", {}), ("bitfit", {}),
         ("adapter", {"style": "houlsby"}), ("adapter", {"style": "adaptformer"}), ("ia3", {})]
# CPU budget (as benchmarks/tuners_fewshot.py): 64 iterations of 16 images instead of CLIP-LoRA's
# 8000 of 32, with a 10x learning rate; scored on a fixed 50-per-class test subset.
CPU_BUDGET = {"iters_per_shot": 4, "batch_size": 16}
LR_SCALE = 10.0
TEST_PER_CLASS = 50


@pytest.fixture(scope="module")
def mini():
    if "vlkit-mini" not in offline_models():
        pytest.skip("vlkit-mini is not available")
    from vlkit.data.offline import load_offline
    from vlkit.store import FeatureStore

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")
    pool, test = load_offline("fashion-mnist", "train"), load_offline("fashion-mnist", "test")
    keep, seen = [], {}
    for i, label in enumerate(test.labels):
        if seen.get(label, 0) < TEST_PER_CLASS:
            seen[label] = seen.get(label, 0) + 1
            keep.append(i)
    test = test.subset(keep, f"first{TEST_PER_CLASS}")
    store = FeatureStore()
    zero = run_fewshot(backbone, pool, test, "zero-shot", 16, 1, store=store)["top1"]
    return backbone, pool, test, store, zero


@pytest.mark.parametrize("name,options", CELLS, ids=[f"{n}-{o.get('style', '')}".rstrip("-") for n, o in CELLS])
def test_beats_zero_shot_at_16_shots(name, options, mini):
    backbone, pool, test, store, zero = mini
    if create_method(name).family == "tuner":
        options = {**options, **CPU_BUDGET, "lr": create_method(name).config.lr * LR_SCALE}
    torch.manual_seed(1)
    result = run_fewshot(backbone, pool, test, create_method(name, **options), 16, 1, store=store)
    assert result["top1"] > zero, f"{name} {options}: {result['top1']:.2f} vs zero-shot {zero:.2f}"
