"""vlkit: adapt a frozen CLIP to new image-classification tasks with few labels.

The public names below load on first use (PEP 562 ``__getattr__``): ``import vlkit`` and
``vlkit --help`` stay fast because torch, open_clip, faiss and scikit-learn are imported
only by the modules that use them. ``from vlkit import Backbone`` works as before.
"""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> the module that defines it
_PUBLIC = {
    "Backbone": "vlkit.backbones", "load_backbone": "vlkit.backbones",
    "ImageDataset": "vlkit.data", "few_shot": "vlkit.data", "load_image_folder": "vlkit.data",
    "load_split_file": "vlkit.data",
    "load_data": "vlkit.data.resolve",
    "DataError": "vlkit.errors", "NotFittedError": "vlkit.errors", "VlkitError": "vlkit.errors",
    "Method": "vlkit.methods", "MethodConfig": "vlkit.methods", "create_method": "vlkit.methods",
    "list_methods": "vlkit.methods", "method_class": "vlkit.methods", "register_method": "vlkit.methods",
    "build_task": "vlkit.protocols.fewshot", "run_fewshot": "vlkit.protocols.fewshot",
    "FeatureStore": "vlkit.features.store",
    "Task": "vlkit.methods.task",
    "Result": "vlkit.report.result",
}
__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    """Import the module behind a public name on first access and cache the name here."""
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vlkit' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
