"""Offline models that ship with vlkit, created by name like open_clip's own configs."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class OfflineModel:
    """What an offline builder returns: the open_clip model (weights loaded) and its I/O."""

    model: nn.Module
    image_size: int
    tokenizer: Callable
    mean: tuple[float, float, float] = OPENAI_MEAN
    std: tuple[float, float, float] = OPENAI_STD


OfflineBuilder = Callable[[], OfflineModel]
_OFFLINE: dict[str, tuple[OfflineBuilder, str]] = {}
_WEIGHT_FILES: dict[str, tuple[Path, ...]] = {}


def register_offline_model(name: str, description: str,
                           weights: Sequence[Path] = ()) -> Callable[[OfflineBuilder], OfflineBuilder]:
    """Decorator: make ``load_backbone(name)`` build this model with no network.

    ``weights``: the files its trained weights come from (none for a seeded random model).
    """

    def wrap(builder: OfflineBuilder) -> OfflineBuilder:
        _OFFLINE[name] = (builder, description)
        _WEIGHT_FILES[name] = tuple(Path(w) for w in weights)
        return builder

    return wrap


def offline_weights_digest(name: str) -> str:
    """A short digest of an offline model's weight files ("" when it has none or is unknown).

    Cheap enough to call without building the model: it names the weights a bench cell used.
    """
    _import_builtin()
    digest = hashlib.blake2b(digest_size=8)
    files = [f for f in _WEIGHT_FILES.get(name, ()) if f.is_file()]
    for file in files:
        digest.update(file.read_bytes())
    return digest.hexdigest() if files else ""


def offline_models() -> dict[str, str]:
    """Names of the registered offline models with one-line descriptions."""
    _import_builtin()
    return {name: desc for name, (_, desc) in _OFFLINE.items()}


def offline_builder(name: str) -> OfflineBuilder | None:
    """The builder registered under ``name``, or None."""
    _import_builtin()
    entry = _OFFLINE.get(name)
    return entry[0] if entry else None


def _import_builtin() -> None:
    from vlkit.backbones import mini, tiny  # noqa: F401  (register vlkit-mini and test-tiny)
