"""The method registry: ``list_methods``, ``create_method``, ``method_class``."""
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from vlkit.errors import VlkitError

if TYPE_CHECKING:  # annotations only: Method.load imports this module
    from vlkit.methods.base import Method

_METHODS: dict[str, type[Method]] = {}

# Modules whose import registers methods; a new family adds its module here.
FAMILY_MODULES = [
    "vlkit.methods.zeroshot",
    "vlkit.methods.linear_probe",
    "vlkit.caches",
    "vlkit.prompts",
    "vlkit.methods.adapters",
    "vlkit.methods.tuners",
    "vlkit.methods.finetune",
    "vlkit.methods.intermediate",
]


def register_method(cls: type[Method]) -> type[Method]:
    """Class decorator: register ``cls`` under ``cls.name``."""
    if not cls.name or not cls.family:
        raise TypeError(f"{cls.__name__} needs a name and a family to be registered")
    if cls.name in _METHODS and _METHODS[cls.name] is not cls:
        raise TypeError(f"method name {cls.name!r} is registered twice")
    _METHODS[cls.name] = cls
    return cls


def _import_families() -> None:
    for module in FAMILY_MODULES:
        importlib.import_module(module)


def list_methods(family: str | None = None) -> list[str]:
    """Registered method names (optionally of one family), in registration order."""
    _import_families()
    return [n for n, c in _METHODS.items() if family is None or c.family == family]


def method_class(name: str) -> type[Method]:
    """The class registered as ``name``; an unknown name lists the known ones."""
    _import_families()
    if name not in _METHODS:
        raise VlkitError(f"unknown method {name!r}; known methods: {', '.join(_METHODS)}")
    return _METHODS[name]


def create_method(name: str, **config: Any) -> Method:
    """``create_method("tip-adapter", alpha=1.0)`` -> an unfitted method."""
    return method_class(name)(**config)
