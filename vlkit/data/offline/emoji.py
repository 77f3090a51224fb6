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

import numpy as np
from PIL import Image

from vlkit.io import cache_root
from vlkit.data.offline.arrays import stratified_split, write_arrays
from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

STYLES = ("google", "twitter")
NPM_MAJOR = "16"
NPM_TIMEOUT_S = 900
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
        raise DataError(f"npm package {package} not found in {prefix} "
                        f"(install it: `npm install --prefix {prefix} {package}@{NPM_MAJOR}`)")
    npm = shutil.which("npm")
    if npm is None:
        raise DataError(f"`npm` is not on PATH; it is needed to fetch {package} "
                        "(install Node.js and npm, e.g. `apt-get install npm`, then retry)")
    prefix.mkdir(parents=True, exist_ok=True)
    cmd = [npm, "install", "--no-audit", "--no-fund", "--prefix", str(prefix), f"{package}@{NPM_MAJOR}"]
    log.info("installing %s: %s", package, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=NPM_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise DataError(f"`{' '.join(cmd)}` took over {NPM_TIMEOUT_S} s; check network access to the "
                        "npm registry and retry") from None
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


# --- the emoji-google / emoji-twitter datasets -------------------------------------------

VERSION = "1"
MIN_PER_CLASS = 20
VAL_FRACTION, TEST_FRACTION = 0.2, 0.3
TEMPLATES = ["a {} emoji.", "an emoji of a {}.", "a {} icon.", "a cartoon drawing of a {}.", "a {}."]
SUBCATEGORY_NAMES = {
    "country-flag": "country flag", "person-role": "person at work", "animal-mammal": "mammal",
    "person-activity": "person doing an activity", "transport-ground": "road vehicle",
    "sky & weather": "sky and weather", "person-sport": "person playing sport",
    "alphanum": "letters and numbers", "food-prepared": "prepared food", "geometric": "geometric shape",
    "person-fantasy": "fantasy character", "time": "clock", "person-gesture": "person gesturing",
    "sport": "sports equipment", "place-building": "building", "face-concerned": "worried face",
    "av-symbol": "media control button", "household": "household object", "game": "game",
    "office": "office supply", "other-symbol": "check mark symbol", "animal-bird": "bird",
    "event": "celebration", "food-fruit": "fruit", "drink": "drink", "face-smiling": "smiling face",
    "food-vegetable": "vegetable", "body-parts": "body part", "place-other": "landmark",
    "plant-other": "plant", "food-asian": "asian food", "book-paper": "book",
    "animal-marine": "sea animal", "light & video": "light and camera", "animal-bug": "bug",
    "transport-air": "aircraft", "transport-water": "boat", "food-sweet": "sweet food",
    "plant-flower": "flower", "musical-instrument": "musical instrument", "animal-reptile": "reptile",
}
ARTWORK_LICENCE = {
    "google": "Apache-2.0 (Google Noto Emoji, https://github.com/googlefonts/noto-emoji)",
    "twitter": "CC-BY-4.0 (Twemoji, Copyright Twitter Inc. and other contributors, "
               "https://github.com/jdecked/twemoji)",
}
CATEGORY_NAMES = {
    "Smileys & Emotion": "smiley face", "People & Body": "person", "Animals & Nature": "animal or plant",
    "Food & Drink": "food or drink", "Travel & Places": "travel place or vehicle", "Activities": "activity",
    "Objects": "object", "Symbols": "symbol", "Flags": "flag", "Component": "skin tone",
}


def readable_subcategory(sub: str) -> str:
    """A prompt-friendly name: ``face-smiling`` -> ``smiling face``, ``hand-prop`` -> ``hand prop``."""
    if sub in SUBCATEGORY_NAMES:
        return SUBCATEGORY_NAMES[sub]
    head, _, rest = sub.partition("-")
    if head in ("face", "animal", "food", "place") and rest:
        return f"{rest.replace('-', ' ')} {head}"
    return sub.replace("-", " ").replace("&", "and")


def _composite(png: str) -> np.ndarray:
    """A 64 px RGBA emoji PNG composited onto white, as ``(64, 64, 3)`` uint8."""
    with Image.open(png) as img:
        rgba = img.convert("RGBA")
    if rgba.size != (64, 64):
        rgba = rgba.resize((64, 64), Image.Resampling.LANCZOS)
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def _labels(keys: list[str], kept: list[str], names: dict) -> tuple[np.ndarray, list[str]]:
    index = {k: i for i, k in enumerate(kept)}
    return np.array([index.get(k, -1) for k in keys]), [names[k] for k in kept]


def build_emoji(style: str, folder: Path) -> dict:
    """Write emoji-``style`` into ``folder``; labels and splits shared with the other style.

    Both npm packages are needed (installed if absent): a subcategory is kept when both
    styles have ``MIN_PER_CLASS`` images of it, and only emoji drawn in both are used.
    """
    per_style = {s: {r["unified"]: r for r in emoji_records(s)} for s in STYLES}
    records = [r for r in emoji_records(style) if all(r["unified"] in per_style[s] for s in STYLES)]
    subs, cats = [r["subcategory"] for r in records], [r["category"] for r in records]
    kept = {}
    for level, keys in (("subcategory", subs), ("category", cats)):
        seen = list(dict.fromkeys(keys))  # order of first appearance (package sort order)
        kept[level] = [k for k in seen if min(sum(r[level] == k for r in per_style[s].values())
                                                for s in STYLES) >= MIN_PER_CLASS]
    images = np.stack([_composite(r["png"]) for r in records])
    split = stratified_split([r["unified"] for r in records], subs, VAL_FRACTION, TEST_FRACTION, "emoji")
    package = emoji_package_dir(style)
    shutil.copy(package / "LICENSE", folder / "LICENSE")
    version = json.loads((package / "package.json").read_text())["version"]
    np.save(folder / "unified.npy", np.array([r["unified"] for r in records]))
    sub_names = {k: readable_subcategory(k) for k in kept["subcategory"]}
    return write_arrays(folder, images, split, {
        "subcategory": _labels(subs, kept["subcategory"], sub_names),
        "category": _labels(cats, kept["category"], CATEGORY_NAMES),
    }, {
        "name": f"emoji-{style}", "version": VERSION, "domain": f"{style} emoji", "templates": TEMPLATES,
        "licence": f"images: {ARTWORK_LICENCE[style]}; emoji.json: MIT (Cal Henderson, see LICENSE)",
        "source": f"npm emoji-datasource-{style}@{version} (https://github.com/iamcal/emoji-data)",
        "recipe": f"64 px PNGs on white; classes with >= {MIN_PER_CLASS} images in both styles; "
                  f"split per subcategory by SHA-256 of the code point, val {VAL_FRACTION}, test {TEST_FRACTION}",
    })


# --- the emoji-google-heldout / emoji-twitter-heldout datasets ----------------------------

HELDOUT_VERSION = "1"
HELDOUT_VAL_FRACTION, HELDOUT_TEST_FRACTION = 0.2, 0.4
HELDOUT_SALT = "emoji-heldout"


def build_emoji_heldout(parent: Path, folder: Path) -> dict:
    """Write ``<parent name>-heldout`` into ``folder``: the test-split emoji of ``parent`` (a
    built emoji-google or emoji-twitter folder), split again by code point into train / val / test.

    vlkit-mini's tower trained on every train and val emoji of the parent datasets and on
    none of their test emoji (``scripts/train_vlkit_mini.py``), so every split here, the
    one a method selects on included, is an emoji that tower never saw. Both styles use the
    same code points per split, so a target test emoji is never a source training emoji.
    """
    info = json.loads((parent / "info.json").read_text())
    rows = np.flatnonzero(np.load(parent / "split.npy") == 2)  # (M,) the parent's held-out rows
    codes = np.load(parent / "unified.npy")[rows]
    labels = {level: np.load(parent / f"labels-{level}.npy")[rows] for level in info["classnames"]}
    split = stratified_split([str(c) for c in codes], labels["subcategory"].tolist(), HELDOUT_VAL_FRACTION,
                             HELDOUT_TEST_FRACTION, HELDOUT_SALT)
    shutil.copy(parent / "LICENSE", folder / "LICENSE")
    np.save(folder / "unified.npy", codes)
    images = np.load(parent / "images.npy", mmap_mode="r")[rows]
    return write_arrays(folder, np.ascontiguousarray(images), split, {
        level: (lab, info["classnames"][level]) for level, lab in labels.items()
    }, {
        "name": f"{info['name']}-heldout", "version": HELDOUT_VERSION, "domain": info["domain"],
        "templates": info["templates"], "licence": info["licence"],
        "source": f"the test split of {info['name']} v{info['version']} (digest {info['digest']}); {info['source']}",
        "recipe": f"{info['name']}'s test-split emoji only (held out of vlkit-mini's training), split per "
                  f"subcategory by SHA-256 of the code point, val {HELDOUT_VAL_FRACTION}, test {HELDOUT_TEST_FRACTION}",
        "parent_digest": info["digest"],
    })
