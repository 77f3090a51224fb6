"""Transferability metrics: estimate, from frozen features and a few labels, how well a
model will adapt, before adapting it (``vlkit rank``). One module per metric family;
every function takes plain arrays and returns a float where higher is better."""
from vlkit.ranking.gbc import gbc
from vlkit.ranking.hscore import hscore, shrinkage_hscore
from vlkit.ranking.leep import leep, nce, nleep
from vlkit.ranking.logme import logme
from vlkit.ranking.otce import otce, otce_parts
from vlkit.ranking.sfda import sfda
from vlkit.ranking.suite import METRICS, compute_metrics, zero_shot_probs
from vlkit.ranking.text_score import text_separation

__all__ = ["METRICS", "compute_metrics", "gbc", "hscore", "leep", "logme", "nce", "nleep", "otce", "otce_parts",
           "sfda", "shrinkage_hscore", "text_separation", "zero_shot_probs"]
