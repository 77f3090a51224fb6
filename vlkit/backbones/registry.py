"""Offline models that ship with vlkit, created by name like open_clip's own configs."""
from __future__ import annotations

import hashlib

from vlkit.backbones.offline_model import _OFFLINE, _WEIGHT_FILES, OfflineBuilder

__all__ = ["offline_builder", "offline_models", "offline_weights_digest"]


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
    from vlkit.backbones import tiny  # noqa: F401  (registers test-tiny)
    from vlkit.backbones import mini  # noqa: F401  (registers vlkit-mini)
