"""Emoji artwork from the npm packages ``emoji-datasource-google`` / ``-twitter``.

``emoji_package_dir`` installs the package into ``<cache root>/npm`` with npm when it is
absent; ``emoji_records`` lists one record per emoji image (name, short names, category,
subcategory, PNG path), for captions and for the offline datasets built below.
"""
from __future__ import annotations

import json
import logging
import shutil
import subprocess
from functools import lru_cache
from pathlib import Path

from vlkit.data.offline.paths import cache_root
from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

STYLES = ("google", "twitter")
NPM_MAJOR = "16"
SKIN_TONES = {"1F3FB": "light skin tone", "1F3FC": "medium-light skin tone", "1F3FD": "medium skin tone",
              "1F3FE": "medium-dark skin tone", "1F3FF": "dark skin tone"}


def _check_style(style: str) -> str:
    if style not in STYLES:
        raise DataError(f"unknown emoji style {style!r}; choose one of {', '.join(STYLES)}")
    return style


def emoji_package_dir(style: str, install: bool = True) -> Path:
    """The folder of npm package ``emoji-datasource-<style>`` (with ``emoji.json`` and ``img/``).

    Looks in ``<cache root>/npm/node_modules``; when absent and ``install`` is true runs
    ``npm install --prefix <cache root>/npm emoji-datasource-<style>@16``.
    """
    package = f"emoji-datasource-{_check_style(style)}"
    prefix = cache_root() / "npm"
    folder = prefix / "node_modules" / package
    if (folder / "emoji.json").is_file():
        return folder
    if not install:
        raise DataError(f"npm package {package} not found in {prefix} (call emoji_package_dir({style!r}) "
                        "to install it, or `vlkit datasets build emoji-{style}`)")
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"`npm` is not on PATH; it is needed to fetch {package} "
                        "(install Node.js and npm, e.g. `apt-get install npm`, then retry)")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"{package}@{NPM_MAJOR}"]
    log.info("installing %s: %s", package, " ".join(cmd))
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not (folder / "emoji.json").is_file():
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise DataError(f"`{' '.join(cmd)}` failed ({tail[0]}); check network or npm registry access and retry")
    return folder


@lru_cache(maxsize=8)
def _emoji_json(path: str) -> list[dict]:
    return json.loads(Path(path).read_text())


def _skin_tone_name(key: str) -> str:
    return ", ".join(SKIN_TONES.get(part.upper(), part) for part in key.split("-"))


def emoji_records(style: str, skin_tones: bool = False) -> list[dict]:
    """One dict per emoji with an image in ``style``, in the package's ``sort_order``.

    Keys: ``name`` (lower case), ``short_names``, ``keywords`` (emoji.json v16 has none,
    so an empty list), ``category``, ``subcategory``, ``unified``, ``png`` (64 px image
    path as str) and ``skin_tone`` (None for the base image). ``skin_tones`` adds one
    record per skin-tone variant (same name and labels as the base emoji).
    """
    folder = emoji_package_dir(style)
    img_dir = folder / "img" / style / "64"
    flag = f"has_img_{style}"
    records: list[dict] = []
    for entry in sorted(_emoji_json(str(folder / "emoji.json")), key=lambda e: e["sort_order"]):
        base = {
            "name": (entry.get("name") or entry["short_name"].replace("_", " ")).lower(),
            "short_names": list(entry.get("short_names") or [entry["short_name"]]),
            "keywords": list(entry.get("keywords") or []),
            "category": entry["category"],
            "subcategory": entry["subcategory"],
        }
        variants = [(None, entry)]
        if skin_tones:
            variants += sorted((entry.get("skin_variations") or {}).items())
        for tone, var in variants:
            png = img_dir / var["image"]
            if var.get(flag) and png.is_file():
                records.append({**base, "unified": var["unified"], "png": str(png),
                                "skin_tone": None if tone is None else _skin_tone_name(tone)})
    if not records:
        raise DataError(f"no {style} emoji images under {img_dir} (delete {folder} and rebuild)")
    return records
