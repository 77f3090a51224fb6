"""Slow: on vlkit-mini over the four offline pairs, the adaptation methods beat their source-only
counterparts (issue 7): DAPrompt over source-only CoOp and the self-training cache over the
plain source Tip-Adapter cache, each on at least three of four pairs.

Both held on v1 only on two pairs each (v1's digit zero-shot, 18-23 %, gave DAPrompt pseudo-labels
of 14-22 % precision); on v2 each holds on three (`benchmarks/results/adapt_pairs.json`): DAPrompt
loses MNIST -> UCI (32.0 vs 45.7: 114 pseudo-labels, 42 % precise), the self-training cache loses
Twitter -> Google emoji (71.7 vs 72.4). The emoji wins are one to three images of 152.
About 55 minutes on one thread, so CI leaves this file out; run it by hand."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import vlkit

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adapt_pairs.py"


def bench():
    spec = importlib.util.spec_from_file_location("adapt_pairs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def claims():
    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")  # a load error fails the tests, never skips
    module = bench()
    rows = module.run_pairs(backbone, module.PAIRS, ["coop", "tip-adapter", "self-training-cache", "daprompt"])
    return module.claims(rows), module.table(rows, ["coop", "tip-adapter", "self-training-cache", "daprompt"])


def test_daprompt_beats_source_only_coop_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["daprompt_beats_coop"] >= 3, table


def test_self_training_cache_beats_the_source_cache_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["self_training_beats_tip"] >= 3, table
