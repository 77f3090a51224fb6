"""Slow: on vlkit-mini with Fashion-MNIST at 16 shots every adapter and tuner beats zero-shot.

Uses the CPU schedule of ``benchmarks/tuners_fewshot.py --cpu-budget`` and its fixed
50-per-class test subset, so the test and the recorded benchmark are the same cells.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

import vlkit
from vlkit.methods import create_method
from vlkit.protocols.fewshot import run_fewshot

pytestmark = pytest.mark.slow

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # the script imports its sibling cache_search, as it does when run
_spec = importlib.util.spec_from_file_location("tuners_fewshot", BENCHMARKS / "tuners_fewshot.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
CELLS = [m for m in bench.METHODS if m[0] not in ("zero-shot", "linear-probe")]


@pytest.fixture(scope="module")
def mini():
    from vlkit.data import first_per_class
    from vlkit.data.offline import load_offline
    from vlkit.features.store import FeatureStore

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")  # a load error fails the tests, never skips
    pool = load_offline("fashion-mnist", "train")
    test = first_per_class(load_offline("fashion-mnist", "test"), 50)
    store = FeatureStore()
    zero = run_fewshot(backbone, pool, test, "zero-shot", 16, 1, store=store)["top1"]
    return backbone, pool, test, store, zero


@pytest.mark.parametrize("label,name,options", CELLS, ids=[c[0] for c in CELLS])
def test_beats_zero_shot_at_16_shots(label, name, options, mini):
    backbone, pool, test, store, zero = mini
    if create_method(name).family == "tuner":
        options = {**options, **bench.CPU_BUDGET.get(label, bench.CPU_BUDGET["*"])}
    torch.manual_seed(1)
    result = run_fewshot(backbone, pool, test, create_method(name, **options), 16, 1, store=store)
    assert result["top1"] > zero, f"{label}: {result['top1']:.2f} vs zero-shot {zero:.2f}"
