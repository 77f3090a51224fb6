"""The one result of a fitted and scored method (DESIGN.md, Result): accuracy, cost, provenance.

Every protocol (few-shot, base-to-novel, domain adaptation) and every command builds it
through :func:`vlkit.protocols.scoring.score`. ``to_dict`` keeps the JSON key names the
result files have always used (``top1``, ``fit_seconds``, ``base``/``novel``/``hm`` ...);
protocol-specific values sit in ``extras`` and are written at the top level beside the
common ones. A ``Result`` also reads like that dict (``result["top1"]``), so code written
against the dicts keeps working.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Iterator

from vlkit.errors import VlkitError


@dataclass(kw_only=True, eq=True)
class Result(Mapping):
    """Accuracy (percent) and cost of one fitted method on one test set.

    ``per_class`` maps each class name present in the test set to its accuracy. Cost
    fields are ``None`` when not measured (a saved run scored again has no fit).
    ``train_memory_bytes`` is the fit's peak memory above the loaded model (CUDA allocated or
    CPU RSS, :func:`vlkit.protocols.scoring.measure`), and ``train_memory_per_image_bytes``
    that divided by the training batch size.
    ``settings`` are the method options this run set (a schedule or ``--set``), and
    ``fingerprint`` names the backbone's weights. ``extras`` holds what only one protocol
    reports: ``base``/``novel``/``hm`` and ``zero_shot`` (base-to-novel), ``source``/
    ``target``/``pseudo_label_*`` (adaptation), ``split``/``templates``/``data`` (commands).
    """

    method: str
    family: str = ""
    shots: int | None = None
    seed: int | None = None
    model: str = ""
    pretrained: str | None = None
    dataset: str = ""
    test_size: int = 0
    top1: float
    mean_per_class: float
    per_class: dict[str, float] = field(default_factory=dict)
    trainable_parameters: int = 0
    artifact_bytes: int | None = None
    fit_seconds: float | None = None
    peak_memory_bytes: int | None = None
    memory_kind: str | None = None
    train_memory_bytes: int | None = None  # peak above the loaded model during fit (scoring.measure)
    train_memory_per_image_bytes: float | None = None  # train_memory_bytes / the training batch size
    latency_ms_per_image: float | None = None
    fit_info: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    fingerprint: str = ""
    extras: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        common = {f.name for f in dataclasses.fields(self)}
        clash = sorted(common & set(self.extras))
        if clash:
            raise VlkitError(f"result extras {clash} would overwrite common result fields: give them other names")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the common fields in a fixed order, then the extras."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extras"}
        out["fit_info"], out["settings"] = dict(self.fit_info), dict(self.settings)
        out["per_class"] = dict(self.per_class)
        return {**out, **self.extras}

    # A read-only mapping over to_dict(): result["top1"], dict(result), {**result}.
    def __getitem__(self, key: str) -> Any:
        if key in self.extras:
            return self.extras[key]
        if key != "extras" and key in self.__dataclass_fields__:
            return getattr(self, key)
        raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self.to_dict())

    def __len__(self) -> int:
        return len(self.to_dict())
