"""Image-tower variants of vlkit-mini against the two claims issue 3 asks of it.

Each candidate is a ``scripts/train_vlkit_mini.py`` run (its arguments are listed in
:data:`CANDIDATES`); ``shipped`` is the script's defaults, which produced the weights in
``vlkit/backbones/weights/``, and ``first-shipped`` the 400-step, 4x4-token tower that
shipped before this search (most variants change one thing of it). A run already in
``--runs/NAME`` is reused only when the recipe and architecture it recorded equal the
candidate's; otherwise it is trained there.

Every candidate is scored on *validation* splits only (this is model development: the
test splits stay for the shipped model's report, ``scripts/eval_vlkit_mini.py``):

- zero-shot top-1 with the best template set (chosen on the same split, so optimistic)
  and with "a photo of a {}.";
- the 16-shot logistic-regression probe of ``eval_vlkit_mini.py`` (C chosen on the
  few-shot validation sample), seeds 1-3, against the same probe on raw pixels;
- zero-shot top-1 on digits-mnist and digits-uci validation (the dataset templates): the
  digit adaptation pairs' pseudo-labels come from it.

The headline ratios are each candidate's probe accuracy over the raw-pixel probe's
(above 1 is the issue's must). Writes benchmarks/results/mini_tower_search.json.

    python scripts/mini_tower_search.py --runs /tmp/mini-runs          # trains what is missing
    python scripts/mini_tower_search.py --runs /tmp/mini-runs --only shipped p8x8
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

import eval_vlkit_mini as E  # noqa: E402
import train_vlkit_mini as T  # noqa: E402
from cache_search import provenance  # noqa: E402
from vlkit.backbones import mini  # noqa: E402
from vlkit.data.offline import load_offline  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "mini_tower_search.json"
GRID_8X8 = {"stem_channels": [64, 128], "patch_size": 4}  # two stem stages: 32 px -> 8x8 tokens
GRID_2X2 = {"stem_channels": [32, 64, 128, 256], "patch_size": 16}  # four stages: 2x2 tokens (shipped)
FIRST_VISION = {"stem_channels": [32, 64, 128], "patch_size": 8}  # the first shipped tower: 4x4 tokens


def first(*args: str, vision: dict | None = None) -> list[str]:
    """Training arguments on top of the first shipped recipe (4x4 tokens, 400 steps).

    Later flags win in argparse, so a candidate's own ``--steps`` overrides the pinned 400.
    """
    return ["--steps", "400", "--warmup", "40", "--vision", json.dumps({**FIRST_VISION, **(vision or {})}), *args]


# name -> (training arguments, what the variant changes)
CANDIDATES: dict[str, tuple[list[str], str]] = {
    "shipped": ([], "the shipped recipe (the script's defaults): 6 layers over 2x2 tokens on a four-stage "
                    "stem, 3600 steps"),
    "first-shipped": (first(), "the first shipped tower: 4x4 tokens, width 192, 400 steps, soft targets"),
    "hard-targets": (first("--soft-tau", "0"), "label-smoothed targets instead of soft synonym targets"),
    "width384": (first("--soft-tau", "0", vision={"width": 384}), "transformer width 384 (7.6M parameters)"),
    "p8x8": (first("--soft-tau", "0", vision=GRID_8X8), "8x8 patch tokens (two-stage stem, stride 4)"),
    "p8x8-soft": (first(vision=GRID_8X8), "8x8 tokens with the shipped soft targets"),
    "cnn": (first("--steps", "1200", "--warmup", "100", vision={"tower": "cnn"}),
            "all-convolutional tower (1.3M, no patch tokens: not shippable, MaPLe/VPT need tokens), 1200 steps"),
    "cnn-3600": (first("--steps", "3600", "--warmup", "200", vision={"tower": "cnn"}),
                 "the all-convolutional tower trained 3x longer (3600 steps)"),
    "p8x8-distill-cnn": (first("--soft-tau", "0", "--teacher", "{runs}/cnn", "--distill-weight", "1",
                               vision=GRID_8X8),
                         "8x8 tokens distilled from the cnn run (weight 1 on 1 - cosine), the issue's suggestion"),
    "glyphs": (["--glyphs"], "the shipped recipe plus digits 0-9 typeset in 21 of matplotlib's fonts, captioned "
               "'digit seven', 'seven', 'number seven' (for the digit adaptation pairs' zero-shot pseudo-labels)"),
    "p2x2-3layers-3600": (["--vision", json.dumps({"layers": 3})], "the shipped recipe with 3 transformer layers"),
    "p8x8-600": (first("--soft-tau", "0", "--steps", "600", "--warmup", "60", vision=GRID_8X8),
                 "8x8 tokens, 600 steps"),
    "p8x8-600-lr2e-3": (first("--soft-tau", "0", "--steps", "600", "--warmup", "60", "--lr", "2e-3",
                              vision=GRID_8X8), "8x8 tokens, 600 steps, lr 2e-3"),
    "p8x8-deepstem": (first("--soft-tau", "0", vision={"stem_strides": [2, 2, 1], "patch_size": 4}),
                      "8x8 tokens from the three-stage stem (last stage stride 1)"),
    "p8x8-deepstem-soft": (first(vision={"stem_strides": [2, 2, 1], "patch_size": 4}),
                           "8x8 tokens, three-stage stem, soft targets"),
}
IGNORED = {"out", "log_every", "device"}  # recipe keys that do not change the weights


def recipe_matches(run: Path, args: list[str]) -> bool:
    """Whether ``run`` holds weights trained with exactly ``args`` (threads included)."""
    record = run / mini.RECIPE_FILE.name
    if not (record.exists() and (run / mini.IMAGE_WEIGHTS.name).exists()):
        return False
    full = json.loads(record.read_text())
    recorded = {"teacher": None, "distill_weight": 0.0, "glyphs": False, **full["recipe"]}  # runs before those flags
    wanted = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(T.parse_args(args)).items()
              if k not in IGNORED}
    # the architecture in full, not the --vision string: the defaults it overrides have changed
    vision = {**mini.MINI_VISION, **json.loads(wanted.pop("vision"))}
    same_vision = mini.recorded_vision(full) == mini.recorded_vision({"architecture": vision})
    # a teacher is a run of this search: its folder name, wherever --runs is
    recorded["teacher"], wanted["teacher"] = (t and Path(t).name for t in (recorded["teacher"], wanted["teacher"]))
    return same_vision and recorded.get("augment") == T.AUG and all(recorded.get(k) == v for k, v in wanted.items())


def train(run: Path, args: list[str]) -> None:
    """One training run into ``run`` through the script (one thread, as shipped)."""
    cmd = [sys.executable, str(ROOT / "scripts" / "train_vlkit_mini.py"), *args, "--out", str(run)]
    subprocess.run(cmd, check=True)


def score(backbone: E.Backbone, seeds: list[int], pixels: list[dict]) -> dict:
    """Validation zero-shot (per template set) and the few-shot probe, mean over seeds."""
    zero_shot = E.template_scores(backbone, load_offline("fashion-mnist", "val"))
    probes = [r["top1"] for r in E.feature_probe(backbone, 16, seeds, "val")]
    digits = {name: E.zero_shot(backbone, name, "val")["top1"] for name in ("digits-mnist", "digits-uci")}
    return {"zero_shot_best": max(zero_shot.values()), "zero_shot_photo": zero_shot["photo"],
            "digits_val_zero_shot": digits,
            "zero_shot_by_template_set": zero_shot, "probe_top1": round(float(np.mean(probes)), 4),
            "probe_by_seed": [round(p, 4) for p in probes],
            "pixels_top1": round(float(np.mean([r["top1"] for r in pixels])), 4)}


def claim(rows: list[dict]) -> str:
    """One line: how many variants beat the pixel probe, and the best probe with its zero-shot."""
    winners = [r["candidate"] for r in rows if r["probe_top1"] > r["pixels_top1"]]
    best = max(rows, key=lambda r: r["probe_top1"])
    return (f"{len(winners)} of {len(rows)} variants' 16-shot probe beats the raw-pixel probe "
            f"({', '.join(winners) or 'none'}; issue 3 needs a ratio above 1 with zero-shot above 20%); "
            f"the best probe, {best['candidate']}, reaches {best['probe_top1'] / best['pixels_top1']:.3f} "
            f"of pixels with {100 * best['zero_shot_best']:.1f}% zero-shot")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=Path, required=True, help="folder of training runs (reused or created)")
    ap.add_argument("--only", nargs="+", choices=sorted(CANDIDATES), default=sorted(CANDIDATES))
    ap.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    pixels = E.pixel_probe(16, args.seeds, "val")  # once: it does not depend on the tower
    rows = []
    for name in args.only:
        train_args, change = CANDIDATES[name]
        train_args = [a.replace("{runs}", str(args.runs)) for a in train_args]  # a teacher run's folder
        run = args.runs / name
        if not recipe_matches(run, train_args):
            train(run, train_args)
        record = json.loads((run / mini.RECIPE_FILE.name).read_text())
        row = {"candidate": name, "change": change, "train_args": " ".join(train_args) or "(defaults)",
               "parameters": record["architecture"]["image_tower_parameters"],
               "train_seconds": record["wall_time_seconds"]["train"],
               "heldout_subcategory_top1": record["retrieval"].get("heldout_subcategory_top1")}
        row.update(score(E.load_mini(run), args.seeds, pixels))
        rows.append(row)
        print(f"{name}: probe {row['probe_top1']:.4f} (pixels {row['pixels_top1']:.4f}), "
              f"zero-shot best {row['zero_shot_best']:.4f}", flush=True)
    doc = {"benchmark": "mini_tower_search", **provenance(args.threads),
           "title": "vlkit-mini image-tower variants: Fashion-MNIST validation probe and zero-shot",
           "claim": claim(rows),
           "ratios": {f"{r['candidate']}_probe_over_pixels": round(r["probe_top1"] / r["pixels_top1"], 4)
                      for r in rows},
           "seeds": args.seeds, "split": f"fashion-mnist val ({len(load_offline('fashion-mnist', 'val'))} images)",
           "seconds": round(time.perf_counter() - t0, 1), "rows": rows}
    RESULTS.write_text(json.dumps(doc, indent=1) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
