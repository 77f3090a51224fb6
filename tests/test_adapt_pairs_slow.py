"""Slow: on vlkit-mini over the four offline pairs, the adaptation methods beat their source-only
counterparts (issue 7): DAPrompt over source-only CoOp and the self-training cache over the
plain source Tip-Adapter cache, each on at least three of four pairs."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

import vlkit
from vlkit.backbones import offline_models

pytestmark = pytest.mark.slow
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "adapt_pairs.py"


def bench():
    spec = importlib.util.spec_from_file_location("adapt_pairs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def claims():
    if "vlkit-mini" not in offline_models():
        pytest.skip("vlkit-mini is not available")
    try:
        backbone = vlkit.load_backbone("vlkit-mini", device="cpu")
    except vlkit.VlkitError as exc:
        pytest.skip(f"vlkit-mini cannot be loaded: {exc}")
    module = bench()
    rows = module.run_pairs(backbone, module.PAIRS, ["coop", "tip-adapter", "self-training-cache", "daprompt"])
    return module.claims(rows), module.table(rows, ["coop", "tip-adapter", "self-training-cache", "daprompt"])


@pytest.mark.xfail(strict=False, reason="issue 7, open: vlkit-mini's zero-shot on digits is at chance (11%), so "
                   "DAPrompt's zero-shot pseudo-labels carry no signal on the two digit pairs (measured: 11.4 vs "
                   "CoOp 29.0 on MNIST -> UCI, 11.5 vs 18.1 on UCI -> MNIST)")
def test_daprompt_beats_source_only_coop_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["daprompt_beats_coop"] >= 3, table


@pytest.mark.xfail(strict=False, reason="issue 7, open: on UCI -> MNIST the self-training cache fell to 4.3 "
                   "(source cache 14.2): pseudo-labels from a near-chance start reinforce their own errors")
def test_self_training_cache_beats_the_source_cache_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["self_training_beats_tip"] >= 3, table
