"""What an offline model is and how one registers: ``OfflineModel`` and ``register_offline_model``.

The builders (``mini``, ``tiny``) import this module to register themselves; the lookups
in :mod:`vlkit.backbones.registry` import the builders. Keeping the two apart keeps the
import graph free of cycles.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from torch import nn

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class OfflineModel:
    """What an offline builder returns: the open_clip model (weights loaded) and its tokenizer.

    The model carries its preprocessing config as every open_clip model does
    (``open_clip.set_model_preprocess_cfg``); the backbone's transforms are built on it.
    """

    model: nn.Module
    tokenizer: Callable


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
