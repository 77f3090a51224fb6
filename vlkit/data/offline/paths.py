"""Where offline datasets are built: ``<cache root>/datasets`` (the cache root is :func:`vlkit.io.cache_root`)."""
from __future__ import annotations

from pathlib import Path

from vlkit.io import cache_root


def datasets_root(root: str | Path | None = None) -> Path:
    """The folder holding one sub-folder per built dataset (``<cache root>/datasets`` by default)."""
    return Path(root).expanduser() if root is not None else cache_root() / "datasets"
