#!/usr/bin/env python
"""Build vlkit-mini v2's training corpus: permissively licensed icons from npm ``@iconify/json``.

Every icon set in the package is kept or dropped by its declared licence and kind:

- kept: MIT, Apache-2.0, ISC, BSD, CC0, Unlicense, OFL, and CC-BY (an attribution list,
  ``ATTRIBUTION.md``, is written beside the corpus and ships with the weights);
- dropped: non-commercial, GPL, CC-BY-SA and MPL sets; sets marked hidden (deprecated
  duplicates); the "Logos" category and brand/logo icon categories; **every emoji set**
  (category "Emoji" and the emoji prefixes below), so that the held-out emoji evaluations
  stay unseen;
- per icon: hidden icons, animated ones (``<animate``: only a first frame renders), icons
  with a rotation or flip attribute, and renders that come out blank or white-on-transparent.

Names become captions: kebab-case words with style and size suffixes removed
(``tshirt-crew-outline`` -> "tshirt crew"; ``bell-off`` -> "crossed out bell"), digits
spelled out ("numeric-7" -> "digit seven"), a few homonyms dropped, and the set's own
icon category attached where it has one. The train/val split is drawn **by base name**,
so every style variant of a validation concept (outline, filled, -off, ...) is validation.

Output (under ``$VLKIT_CACHE/vlkit-mini-corpus/<version>/``, built once, deterministic):
``icons.npy`` (N, 4, S, S) uint8 RGBA renders, ``icons.json`` (per icon: set, name,
concept; per concept: phrase, category, split), ``sets.json`` (each kept set's licence,
author and icon count), ``ATTRIBUTION.md`` and ``manifest.json`` (package and renderer
versions, counts, the filters above).

    python scripts/build_mini_corpus.py                 # all permissive sets, 32 px
    python scripts/build_mini_corpus.py --limit 2000    # a quick look
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import multiprocessing as mp
import re
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlkit.io import atomic_file, atomic_write_json, atomic_write_text, cache_root  # noqa: E402

log = logging.getLogger("build_mini_corpus")

PACKAGE = "@iconify/json"
VERSION = "2.2.535"
PERMISSIVE = {"MIT", "Apache-2.0", "ISC", "BSD-2-Clause", "BSD-3-Clause", "CC0-1.0", "Unlicense",
              "OFL-1.1"}
ATTRIBUTION = {"CC-BY-4.0", "CC-BY-3.0"}
EMOJI_PREFIXES = ("emojione", "fluent-emoji", "fxemoji", "noto", "openmoji", "streamline-emojis",
                  "twemoji")
DROPPED_SET_CATEGORIES = {"Logos", "Emoji"}
STYLE_WORDS = {
    "outline", "outlined", "outlines", "filled", "fill", "solid", "bold", "light", "thin", "regular",
    "duotone", "duo", "twotone", "sharp", "rounded", "round", "line", "lines", "linear", "broken",
    "bulk", "alt", "alternate", "o", "mini", "micro", "sm", "lg", "xs", "xl", "thick", "fine",
    "stroke", "stroked", "glyph", "flat", "color", "colored", "colour", "twotone", "rounded",
    "symbol", "icon", "variant", "box", "sharp", "dark", "contained", "tone", "two", "r", "s", "f",
    "baseline", "small", "large", "medium", "big", "filled", "empty", "half",
}
HOMONYMS = {"bear left", "bear right", "coat hanger", "fan", "mouse", "bat", "crane", "mole", "seal",
            "bow", "pitcher", "glasses", "star", "bank", "ring", "tie", "trunk", "jack", "spring"}
DIGITS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
DIGIT_WORDS = {"numeric", "number", "num", "digit", "numeral", "counter"}


# --- the package ---------------------------------------------------------------------------


def fetch_package(folder: Path, version: str) -> Path:
    """The ``npm pack`` tarball of @iconify/json at ``version`` (downloaded once)."""
    tgz = folder / f"iconify-json-{version}.tgz"
    if not tgz.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "pack", f"{PACKAGE}@{version}", "--silent"], cwd=folder, check=True,
                       stdout=subprocess.DEVNULL)
    return tgz


def read_sets(tgz: Path) -> tuple[dict, dict[str, dict]]:
    """(collections.json, {prefix: set json}) read straight from the tarball."""
    sets: dict[str, dict] = {}
    collections: dict = {}
    with tarfile.open(tgz) as tar:
        for member in tar:
            if member.name == "package/collections.json":
                collections = json.load(tar.extractfile(member))
            elif member.name.startswith("package/json/") and member.name.endswith(".json"):
                sets[Path(member.name).stem] = json.load(tar.extractfile(member))
    return collections, sets


def keep_set(prefix: str, info: dict) -> str | None:
    """Why a set is dropped, or None when it is kept."""
    spdx = info.get("license", {}).get("spdx", "")
    if info.get("hidden"):
        return "hidden (deprecated duplicate)"
    if prefix.startswith(EMOJI_PREFIXES) or info.get("category") in DROPPED_SET_CATEGORIES \
            or prefix.endswith("brands"):
        return f"category {info.get('category')!r} / emoji"
    if spdx not in PERMISSIVE | ATTRIBUTION:
        return f"licence {spdx or info.get('license', {}).get('title')!r}"
    return None


# --- names -> concepts ---------------------------------------------------------------------


def concept_of(name: str) -> tuple[str, str] | None:
    """(base concept, caption phrase) of an icon name, or None for names that say nothing.

    ``tshirt-crew-outline`` -> ("tshirt crew", "tshirt crew"); ``bell-off`` -> ("bell",
    "crossed out bell"); ``numeric-7-box`` -> ("digit seven", "digit seven").
    """
    words = [w for w in re.split(r"[-_.\s]+", name.lower()) if w]
    words = [re.sub(r"(?<=[a-z])\d+x$", "", w) for w in words]
    if words and words[0] in ("brand", "logo") or "logo" in words:
        return None
    crossed = False
    if len(words) >= 2 and words[0] in DIGIT_WORDS and re.fullmatch(r"\d", words[1]):
        words = ["digit", DIGITS[int(words[1])]] + words[2:]
    elif words and re.fullmatch(r"\d", words[0]):
        words = ["digit", DIGITS[int(words[0])]] + words[1:]
    while words and (words[-1] in STYLE_WORDS or re.fullmatch(r"\d+(px|x)?", words[-1]) or words[-1] == "off"):
        crossed |= words[-1] == "off"
        words.pop()
    while words and words[0] in STYLE_WORDS - {"o"}:
        words.pop(0)
    words = [w for w in words if not re.fullmatch(r"\d+", w)] if len(words) > 1 else words
    if not words or not any(re.search(r"[a-z]{2}", w) for w in words):
        return None
    base = " ".join(words)
    if base in HOMONYMS:
        return None
    return base, f"crossed out {base}" if crossed else base


def icon_categories(data: dict) -> dict[str, str]:
    """{icon name: the set's category for it} (first one listed), brand/logo categories kept."""
    out: dict[str, str] = {}
    for cat, names in (data.get("categories") or {}).items():
        for n in names:
            out.setdefault(n, cat)
    return out


def is_brand(category: str) -> bool:
    return bool(re.search(r"logo|brand|social", category, re.I))


def split_of(base: str, val_fraction: float) -> str:
    """'train' or 'val', by a hash of the base concept (all its style variants go together)."""
    h = int(hashlib.sha256(base.encode()).hexdigest()[:8], 16) / 0xFFFFFFFF
    return "val" if h < val_fraction else "train"


# --- rendering -----------------------------------------------------------------------------


def svg_of(data: dict, icon: dict, size: int) -> str:
    """A standalone SVG of one icon at ``size`` px."""
    left, top = icon.get("left", data.get("left", 0)), icon.get("top", data.get("top", 0))
    width = icon.get("width", data.get("width", 16))
    height = icon.get("height", data.get("height", 16))
    return (f'<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" '
            f'width="{size}" height="{size}" viewBox="{left} {top} {width} {height}" color="#000">'
            f'{icon["body"]}</svg>')


def render(job: tuple[str, int]) -> np.ndarray | None:
    """(4, S, S) uint8 RGBA of one SVG, or None if it fails or comes out blank / white."""
    import resvg_py

    svg, size = job
    try:
        png = resvg_py.svg_to_bytes(svg_string=svg, width=size, height=size, skip_system_fonts=True)
        with Image.open(io.BytesIO(bytes(png))) as im:
            rgba = np.asarray(im.convert("RGBA").resize((size, size)), dtype=np.uint8).transpose(2, 0, 1)
    except Exception:  # noqa: BLE001 - an icon resvg cannot draw is skipped and counted
        return None
    alpha = rgba[3].astype(np.float32) / 255
    if alpha.sum() < 0.01 * size * size:
        return None
    lum = (0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]) / 255
    if float((lum * alpha).sum() / alpha.sum()) > 0.9:  # white-on-transparent variant
        return None
    return rgba


# --- the build -----------------------------------------------------------------------------


def collect(collections: dict, sets: dict[str, dict], limit: int | None) -> tuple[list[dict], dict, dict]:
    """Every icon to render (set, name, concept, svg), the kept sets, the dropped sets."""
    kept, dropped, icons = {}, {}, []
    for prefix in sorted(sets):
        info = collections.get(prefix, sets[prefix].get("info", {}))
        reason = keep_set(prefix, info)
        if reason:
            dropped[prefix] = reason
            continue
        data = sets[prefix]
        cats = icon_categories(data)
        aliases: dict[str, list[str]] = {}
        for alias, a in (data.get("aliases") or {}).items():
            if set(a) <= {"parent"}:
                aliases.setdefault(a["parent"], []).append(alias)
        n = 0
        for name in sorted(data["icons"]):
            icon = data["icons"][name]
            if icon.get("hidden") or "<animate" in icon["body"] or icon.get("rotate") or \
                    icon.get("hFlip") or icon.get("vFlip"):
                continue
            cat = cats.get(name, "")
            if is_brand(cat):
                continue
            c = concept_of(name)
            if c is None:
                continue
            synonyms = sorted({s[1] for s in map(concept_of, aliases.get(name, []))
                               if s and s[1] != c[1] and not s[1].startswith(prefix.split("-")[0] + " ")})
            icons.append({"set": prefix, "name": name, "base": c[0], "phrase": c[1], "category": cat,
                          "synonyms": synonyms, "svg": None, "_data": (data, icon)})
            n += 1
        lic = info.get("license", {})
        kept[prefix] = {"name": info.get("name", prefix), "author": info.get("author", {}),
                        "license": lic, "attribution_required": lic.get("spdx") in ATTRIBUTION,
                        "icons_listed": n}
    if limit:
        step = max(1, len(icons) // limit)
        icons = icons[::step][:limit]
    return icons, kept, dropped


def attribution_text(kept: dict, used: dict[str, int]) -> str:
    """ATTRIBUTION.md: every set whose icons were used, with author and licence."""
    lines = ["# Icons in vlkit-mini v2's training corpus", "",
             f"Rendered from the npm package {PACKAGE}@{VERSION} (iconify.design). Each set below keeps "
             "its own licence; CC-BY sets require this attribution.", "",
             "| set | author | licence | icons used |", "|---|---|---|---|"]
    for prefix in sorted(used):
        s = kept[prefix]
        author = s["author"].get("name", "") + (f" ({s['author']['url']})" if s["author"].get("url") else "")
        lic = s["license"]
        lines.append(f"| {s['name']} (`{prefix}`) | {author} | {lic.get('title', '')} "
                     f"({lic.get('spdx', '')}, {lic.get('url', '')}) | {used[prefix]} |")
    return "\n".join(lines) + "\n"


def build(size: int, workers: int, limit: int | None, val_fraction: float) -> Path:
    """Render the corpus once into the cache; return its folder."""
    import resvg_py  # noqa: F401 - fail early with the import error

    tag = f"{VERSION}-{size}px" + (f"-limit{limit}" if limit else "")
    out = cache_root() / "vlkit-mini-corpus" / tag
    if (out / "manifest.json").is_file():
        log.info("corpus already built: %s", out)
        return out
    start = time.time()
    collections, sets = read_sets(fetch_package(cache_root() / "vlkit-mini-corpus", VERSION))
    icons, kept, dropped = collect(collections, sets, limit)
    log.info("%d icons from %d sets to render (%d sets dropped)", len(icons), len(kept), len(dropped))
    jobs = [(svg_of(*ic.pop("_data"), size), size) for ic in icons]
    del sets
    with mp.get_context("fork").Pool(workers) as pool:
        renders = []
        for i, r in enumerate(pool.imap(render, jobs, chunksize=256)):
            renders.append(r)
            if i % 20000 == 0:
                log.info("rendered %d / %d (%.0f s)", i, len(jobs), time.time() - start)
    good = [i for i, r in enumerate(renders) if r is not None]
    concepts: dict[tuple[str, str], int] = {}
    table, rows = [], []
    for i in good:
        ic = icons[i]
        key = (ic["phrase"], ic["category"])
        if key not in concepts:
            concepts[key] = len(table)
            table.append({"phrase": ic["phrase"], "base": ic["base"], "category": ic["category"],
                          "synonyms": [], "split": split_of(ic["base"], val_fraction)})
        c = table[concepts[key]]
        c["synonyms"] = sorted(set(c["synonyms"]) | set(ic["synonyms"]))[:6]
        rows.append({"set": ic["set"], "name": ic["name"], "concept": concepts[key]})
    out.mkdir(parents=True, exist_ok=True)
    with atomic_file(out / "icons.npy") as tmp:
        np.save(tmp, np.stack([renders[i] for i in good]), allow_pickle=False)
    used: dict[str, int] = {}
    for r in rows:
        used[r["set"]] = used.get(r["set"], 0) + 1
    atomic_write_json(out / "icons.json", {"icons": rows, "concepts": table})
    atomic_write_json(out / "sets.json", {"kept": {p: kept[p] | {"icons_used": used[p]} for p in used},
                                          "dropped": dropped})
    atomic_write_text(out / "ATTRIBUTION.md", attribution_text(kept, used))
    from importlib.metadata import version
    manifest = {
        "source": f"npm {PACKAGE}@{VERSION}", "renderer": f"resvg-py {version('resvg-py')}",
        "size": size, "icons": len(rows), "failed_or_blank": len(icons) - len(rows),
        "concepts": len(table), "val_concepts": sum(c["split"] == "val" for c in table),
        "val_icons": sum(table[r["concept"]]["split"] == "val" for r in rows),
        "sets_used": len(used), "sets_dropped": len(dropped), "val_fraction": val_fraction,
        "licences_kept": sorted(PERMISSIVE | ATTRIBUTION), "emoji_prefixes_dropped": list(EMOJI_PREFIXES),
        "seconds": round(time.time() - start, 1), "limit": limit,
    }
    atomic_write_json(out / "manifest.json", manifest)
    log.info("corpus: %s", json.dumps(manifest))
    return out


def main(argv: list[str] | None = None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=32, help="render size in pixels (vlkit-mini sees 32)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--limit", type=int, default=None, help="render only this many icons (a quick look)")
    ap.add_argument("--val-fraction", type=float, default=0.05)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    return build(args.size, args.workers, args.limit, args.val_fraction)


if __name__ == "__main__":
    print(main())
