"""Evaluation protocols of the bench: what one cell runs and which metrics it reports.

``fewshot``: the few-shot protocol of CoOp/Tip-Adapter: ``shots`` images per class from
the training pool (validation ``min(shots, 4)`` per class, disjoint), scored once on
the test split (:func:`vlkit.protocols.fewshot.run_fewshot`).

``base2novel``: CoCoOp's protocol: classes split in halves, fit on the base half, scored
on base and novel test classes, harmonic mean reported. The bench calls
``vlkit.protocols.base_to_novel.base_to_novel`` with ``run_fewshot``'s signature; it must
return ``run_fewshot``'s dict plus ``base`` and ``novel`` accuracies in percent
(``base_top1``/``novel_top1``/``harmonic_mean`` are accepted too); ``hm`` is added
here when missing.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable

from vlkit.protocols.sources import DataSource
from vlkit.errors import VlkitError

BASE2NOVEL_FUNCTION = ("vlkit.protocols.base_to_novel", "base_to_novel")


def harmonic_mean(base: float, novel: float) -> float:
    """2 b n / (b + n); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


@dataclass(frozen=True)
class Protocol:
    """A protocol: its name, the metrics its cells report, and how to run one cell."""

    name: str
    metrics: tuple[str, ...]
    runner: Callable[..., dict[str, Any]]
    accepts: Callable[[str], bool]

    def run(self, backbone: Any, source: DataSource, method: str, shots: int, seed: int, store: Any,
            views: int, **config: Any) -> dict[str, Any]:
        """Fit ``method`` (with option overrides ``config``) on one cell; its result dict (accuracy + cost)."""
        return self.runner(backbone, source.split("train"), source.split("test"), method, shots, seed,
                           store=store, views=views, **config)


def _fewshot(*args: Any, **kwargs: Any) -> dict[str, Any]:
    from vlkit.protocols.fewshot import run_fewshot

    return run_fewshot(*args, **kwargs)


def _base2novel(*args: Any, **kwargs: Any) -> dict[str, Any]:
    module, name = BASE2NOVEL_FUNCTION
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        raise VlkitError(f"--protocol base2novel needs {module}.{name}, which this vlkit does not have yet; "
                         "use --protocol fewshot") from None
    result = dict(fn(*args, **kwargs))
    for ours, theirs in (("base", "base_top1"), ("novel", "novel_top1"), ("hm", "harmonic_mean")):
        if ours not in result and theirs in result:  # accept the CLI's spelling too
            result[ours] = result[theirs]
    if "base" not in result or "novel" not in result:
        raise VlkitError(f"{module}.{name} returned no 'base'/'novel' accuracy (got keys {sorted(result)})")
    result.setdefault("hm", harmonic_mean(float(result["base"]), float(result["novel"])))
    return result


def _fewshot_method(name: str) -> bool:
    from vlkit.methods import method_class

    return getattr(method_class(name), "task_kind", "fewshot") == "fewshot"


def _novel_capable(name: str) -> bool:
    """Methods whose learned prompts apply to unseen class names (shared prompts with ``retarget``)."""
    from vlkit.methods import create_method

    if not _fewshot_method(name):
        return False
    method = create_method(name)
    return hasattr(method, "retarget") and bool(getattr(method, "transfers_to_new_classes", False))


PROTOCOLS: dict[str, Protocol] = {
    "fewshot": Protocol("fewshot", ("top1",), _fewshot, _fewshot_method),
    "base2novel": Protocol("base2novel", ("base", "novel", "hm"), _base2novel, _novel_capable),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise VlkitError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
