"""Tiny training budgets for the tuners, fine-tuning, intermediate-layer methods and feature adapters in the
contract matrix."""
from __future__ import annotations

_TINY = {"iters_per_shot": 1, "val_checks": 2, "batch_size": 8}

OVERRIDES = {
    "lora": dict(_TINY),
    "prefix-tuning": dict(_TINY, length=2),
    "vpt-shallow": dict(_TINY, tokens=2),
    "vpt-deep": dict(_TINY, tokens=2),
    "bitfit": dict(_TINY),
    "adapter": dict(_TINY, bottleneck=4),
    "ia3": dict(_TINY),
    "tinytl": dict(_TINY),
    "full-finetune": dict(_TINY),
    "wise-ft": dict(_TINY, alphas=[0.0, 0.5, 1.0]),
    "lst": {"epochs": 3},
    "head2toe": {"epochs": 3, "fractions": [0.1, 1.0]},
    "clip-adapter": {"epochs": 5},
    "zs-linear-probe": {"epochs": 5},
    "clap": {"epochs": 5},
    "lp++": {"epochs": 20},
}
