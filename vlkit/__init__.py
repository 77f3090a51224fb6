"""vlkit: adapt a frozen CLIP to new image-classification tasks with few labels.

The public names load on first use (PEP 562 ``__getattr__``): ``import vlkit``, ``vlkit
--help`` and ``vlkit.__version__`` stay fast because torch, open_clip, faiss and
scikit-learn are imported only when a public name is first asked for (then all of them
load, as a plain import did before). ``from vlkit import Backbone`` works as before.
"""
from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["Backbone", "DataError", "FeatureStore", "ImageDataset", "Method", "MethodConfig", "NotFittedError",
           "Result", "Task", "VlkitError", "build_task", "create_method", "few_shot", "list_methods", "load_backbone",
           "load_data", "load_image_folder", "load_split_file", "method_class", "register_method", "run_fewshot"]


def __getattr__(name: str) -> Any:
    """Import the public names on the first access to one of them; other names are not attributes."""
    if name not in __all__:
        raise AttributeError(f"module 'vlkit' has no attribute {name!r}")
    from vlkit.backbones import Backbone, load_backbone
    from vlkit.data import ImageDataset, few_shot, load_image_folder, load_split_file
    from vlkit.data.resolve import load_data
    from vlkit.errors import DataError, NotFittedError, VlkitError
    from vlkit.features.store import FeatureStore
    from vlkit.methods import Method, MethodConfig, create_method, list_methods, method_class, register_method
    from vlkit.methods.task import Task
    from vlkit.protocols.fewshot import build_task, run_fewshot
    from vlkit.report.result import Result

    public = {key: value for key, value in locals().items() if key in __all__}
    globals().update(public)
    return public[name]


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
