"""The offline encoder pool of ``benchmarks/rank.py``: 10 CLIP models with no network.

Every member is a ``vlkit rank --models`` spec. Two ship with vlkit (``vlkit-mini``,
``test-tiny``); the others are folders under ``$VLKIT_CACHE/rank_pool/`` (never in git):

- training runs of the vlkit-mini recipe (``scripts/train_vlkit_mini.py --steps N --out DIR``,
  one thread) stopped at different step counts: the same tower at different quality;
- towers of the tower search (``scripts/mini_tower_search.py``'s axes: width/depth, an
  all-convolutional tower) at other sizes, trained briefly;
- random-init towers of three sizes (weights written straight from the seeded init, no
  training): the floor of the pool.

A folder that already holds the recipe it should (``vlkit_mini.json`` equal on the
recipe keys that change weights) is reused, so the build is one command that resumes:

    python benchmarks/rank_pool.py            # builds what is missing, prints the specs
"""
from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import time
from pathlib import Path

import torch

from vlkit.backbones import mini
from vlkit.io import cache_root

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ["vlkit-mini", "test-tiny"]
SMALL = {"width": 96, "layers": 2, "head_width": 32}  # a 4x smaller transformer on the shipped stem
CNN = {"tower": "cnn"}
# name -> training arguments (short runs; the warm-up scales with the steps)
TRAINED: dict[str, list[str]] = {
    "mini-steps100": ["--steps", "100", "--warmup", "10"],
    "mini-steps300": ["--steps", "300", "--warmup", "30"],
    "mini-steps800": ["--steps", "800", "--warmup", "80"],
    "small-steps300": ["--steps", "300", "--warmup", "30", "--vision", json.dumps(SMALL)],
    "cnn-steps300": ["--steps", "300", "--warmup", "30", "--vision", json.dumps(CNN)],
}
# name -> image-tower overrides of a random-init member
RANDOM: dict[str, dict] = {"mini-random": {}, "small-random": SMALL, "cnn-random": CNN}
RANDOM_SEED = 0


def pool_dir() -> Path:
    """Where the pool's folders live: ``$VLKIT_CACHE/rank_pool``."""
    return cache_root() / "rank_pool"


def _recorded(run: Path) -> dict | None:
    record = run / mini.RECIPE_FILE.name
    if not (record.is_file() and (run / mini.IMAGE_WEIGHTS.name).is_file()):
        return None
    return json.loads(record.read_text())


def trained_matches(run: Path, args: list[str]) -> bool:
    """Whether ``run`` holds a finished training run with ``args``' steps, warm-up and architecture."""
    record = _recorded(run)
    if record is None:
        return False
    sys.path.insert(0, str(ROOT / "scripts"))
    import train_vlkit_mini as T  # noqa: PLC0415 (a script, importable only from here)

    wanted = vars(T.parse_args(args))
    recipe = record["recipe"]
    return all(recipe.get(k) == wanted[k] for k in ("steps", "warmup", "seed", "lr", "threads")) and \
        mini.recorded_vision(record) == mini.recorded_vision({"architecture": {**mini.MINI_VISION,
                                                                               **json.loads(wanted["vision"])}})


def write_random(run: Path, vision: dict) -> None:
    """A random-init tower as a run folder (fp16 image weights + the record ``load_run`` reads)."""
    from safetensors.torch import save_file

    torch.manual_seed(RANDOM_SEED)
    model = mini.build_mini_model(vision)
    for module in model.visual.modules():  # the training script's init, without training
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.trunc_normal_(module.weight, std=0.02)
            if module.bias is not None:
                torch.nn.init.zeros_(module.bias)
    state = {k: v.detach().half().contiguous() for k, v in mini.image_state(model).items()}
    state["logit_scale"] = torch.full_like(state["logit_scale"], math.log(10.0))
    run.mkdir(parents=True, exist_ok=True)
    save_file(state, str(run / mini.IMAGE_WEIGHTS.name))
    params = sum(p.numel() for p in model.visual.parameters())
    record = {"model": "vlkit-mini", "architecture": {**mini.MINI_VISION, **vision, "image_tower_parameters": params},
              "recipe": {"steps": 0, "seed": RANDOM_SEED, "init": "random (seeded), no training"}}
    (run / mini.RECIPE_FILE.name).write_text(json.dumps(record, indent=1) + "\n")


def build_pool(root: Path | None = None, threads: int = 1) -> list[str]:
    """Build (or reuse) every member; return the pool as ``--models`` specs, shipped ones first."""
    root = root or pool_dir()
    specs = list(SHIPPED)
    for name, vision in RANDOM.items():
        run = root / name
        if _recorded(run) is None:
            write_random(run, vision)
        specs.append(str(run))
    for name, args in TRAINED.items():
        run = root / name
        args = [*args, "--threads", str(threads)]
        if not trained_matches(run, args):
            start = time.perf_counter()
            subprocess.run([sys.executable, str(ROOT / "scripts" / "train_vlkit_mini.py"), *args, "--out", str(run)],
                           check=True)
            print(f"{name}: trained in {time.perf_counter() - start:.0f} s", flush=True)
        specs.append(str(run))
    return specs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", type=Path, default=None, help="default: $VLKIT_CACHE/rank_pool")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(",".join(build_pool(args.root, args.threads)))


if __name__ == "__main__":
    main()
