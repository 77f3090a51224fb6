"""Offline datasets built from registry packages (npm, Debian, PyPI) into the cache root."""
from vlkit.data.offline.emoji import emoji_package_dir, emoji_records
from vlkit.data.offline.paths import cache_root

__all__ = ["cache_root", "emoji_package_dir", "emoji_records"]
