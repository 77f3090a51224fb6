"""Evaluation protocols of the bench: what one cell runs and which metrics it reports.

``fewshot``: the few-shot protocol of CoOp/Tip-Adapter: ``shots`` images per class from
the training pool (validation: the data's val split, else ``min(shots, 4)`` per class from the
pool, disjoint), scored once on the test split (:func:`vlkit.protocols.fewshot.run_fewshot`).

``base2novel``: CoCoOp's protocol: classes split in halves, fit on the base half, scored
on base and novel test classes, harmonic mean reported
(:func:`vlkit.protocols.base_to_novel.base_to_novel`, same signature as ``run_fewshot``;
its result carries ``base``, ``novel`` and ``hm``).

Both return a :class:`~vlkit.report.result.Result`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from vlkit.data.fewshot import DEFAULT_VAL_PER_CLASS
from vlkit.errors import VlkitError
from vlkit.protocols.base_to_novel import base_to_novel
from vlkit.protocols.fewshot import run_fewshot
from vlkit.protocols.sources import DataSource
from vlkit.report.result import Result


@dataclass(frozen=True)
class Protocol:
    """A protocol: its name, the metrics its cells report, and how to run one cell."""

    name: str
    metrics: tuple[str, ...]
    runner: Callable[..., Result]
    accepts: Callable[[str], bool]

    def run(self, backbone: Any, source: DataSource, method: str, shots: int, seed: int, store: Any,
            views: int, val: str = "auto", val_per_class: int = DEFAULT_VAL_PER_CLASS, **config: Any) -> Result:
        """Fit ``method`` (with option overrides ``config``) on one cell; its result (accuracy + cost).

        Validation: ``source``'s val split unless ``val`` is ``from-train`` (see
        :func:`vlkit.data.choose_validation`), at most ``val_per_class`` per class."""
        val_set = None if val == "from-train" else source.val_split()
        return self.runner(backbone, source.split("train"), source.split("test"), method, shots, seed,
                           store=store, views=views, val_set=val_set, val=val, val_per_class=val_per_class,
                           **config)


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
    "fewshot": Protocol("fewshot", ("top1",), run_fewshot, _fewshot_method),
    "base2novel": Protocol("base2novel", ("base", "novel", "hm"), base_to_novel, _novel_capable),
}


def get_protocol(name: str) -> Protocol:
    """The protocol called ``name``; an unknown name lists the known ones."""
    if name not in PROTOCOLS:
        raise VlkitError(f"unknown protocol {name!r}; use one of {', '.join(PROTOCOLS)}")
    return PROTOCOLS[name]
