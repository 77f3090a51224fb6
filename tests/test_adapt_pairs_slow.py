"""Slow: on vlkit-mini over the four offline pairs, the adaptation methods beat their source-only
counterparts (issue 7): DAPrompt over source-only CoOp and the self-training cache over the
plain source Tip-Adapter cache, each on at least three of four pairs."""
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


# strict: a pass fails (the claim holds: drop the marker); raises: only the claim's assertion is
# expected, so a model or data that will not load fails the test instead of counting as expected.
@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 7, blocked: DAPrompt beats CoOp on the two held-out emoji pairs "
                   "(69.7 vs 66.4, 68.4 vs 63.8) but not on digits, where vlkit-mini's zero-shot (18-23%) gives "
                   "pseudo-labels of 14-22% precision, most in one class, and DAPrompt trains its target prompts on "
                   "them (17.3 vs CoOp 37.6 on MNIST -> UCI, 20.4 vs 36.9 on UCI -> MNIST)")
def test_daprompt_beats_source_only_coop_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["daprompt_beats_coop"] >= 3, table


@pytest.mark.xfail(strict=True, raises=AssertionError,
                   reason="issue 7, blocked: the self-training cache beats the source cache on the "
                   "digit pairs (49.6 vs 39.0, 34.5 vs 33.2) but not on the held-out emoji pairs: its 50 target "
                   "pseudo-labels (76-77% precise) leave top-1 where the 153-image source cache had it (69.1 vs "
                   "69.1) or lower it (67.8 vs 69.1)")
def test_self_training_cache_beats_the_source_cache_on_three_of_four_pairs(claims):
    won, table = claims
    assert won["self_training_beats_tip"] >= 3, table
