"""Where vlkit keeps what it builds or downloads: the cache root."""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache root: ``$VLKIT_CACHE`` if set, else ``~/.cache/vlkit`` (not created here)."""
    env = os.environ.get("VLKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "vlkit"


def datasets_root(root: str | Path | None = None) -> Path:
    """The folder holding one sub-folder per built dataset (``<cache root>/datasets`` by default)."""
    return Path(root).expanduser() if root is not None else cache_root() / "datasets"
