"""Feature-store extraction throughput against a plain open_clip encoding loop.

Both run side by side in one process on the same images, same model, same batch size:
  plain: for each batch, decode with PIL, preprocess, ``model.encode_image``, normalise.
  store (miss): ``FeatureStore.image_features`` on an empty cache (shards, checksums, fsync).
  store (hit): the same call again.
Prints the ratios and writes benchmarks/results/feature_store.json.

    python benchmarks/feature_store.py --model ViT-B-32 --images 256
"""
from __future__ import annotations

import argparse
import json
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

import vlkit
from vlkit.data import load_image_folder
from vlkit.features.store import FeatureStore


def make_images(root: Path, count: int, size: int = 256) -> Path:
    """``count`` random JPEGs in 4 class folders (decode cost like real photos)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        folder = root / f"class{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(folder / f"{i}.jpg", quality=90)
    return root


def plain_loop(backbone: vlkit.Backbone, paths: list[str], batch_size: int) -> torch.Tensor:
    """The baseline everybody writes: decode, preprocess, encode, batch by batch."""
    out = []
    with torch.no_grad():
        for start in range(0, len(paths), batch_size):
            batch = torch.stack([backbone.preprocess(Image.open(p).convert("RGB"))
                                 for p in paths[start:start + batch_size]])
            out.append(F.normalize(backbone.model.encode_image(batch.to(backbone.device)).float(), dim=-1).cpu())
    return torch.cat(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="ViT-B-32", help="open_clip name (random weights) or vlkit-mini")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="best of N for each side")
    args = parser.parse_args()
    torch.manual_seed(0)
    backbone = vlkit.load_backbone(args.model, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        data = load_image_folder(make_images(Path(tmp) / "images", args.images))
        paths = [str(src) for src, _ in data.items]
        plain_loop(backbone, paths[: args.batch_size], args.batch_size)  # warm-up
        plain_s, miss_s, hit_s = [], [], []
        for r in range(args.repeats):
            start = time.perf_counter()
            reference = plain_loop(backbone, paths, args.batch_size)
            plain_s.append(time.perf_counter() - start)
            store = FeatureStore(Path(tmp) / f"store{r}", batch_size=args.batch_size)
            start = time.perf_counter()
            stored = store.image_features(backbone, data)
            miss_s.append(time.perf_counter() - start)
            start = time.perf_counter()
            store.image_features(backbone, data)
            hit_s.append(time.perf_counter() - start)
    agree = float(F.cosine_similarity(reference, stored).min())
    result = {
        "benchmark": "feature_store", "command": shlex.join(["python", *sys.argv]),
        "machine": f"{platform.machine()}, {torch.get_num_threads()} threads, {platform.processor() or 'cpu'}",
        "model": args.model, "images": args.images, "batch_size": args.batch_size,
        "plain_seconds": min(plain_s), "store_miss_seconds": min(miss_s), "store_hit_seconds": min(hit_s),
        "miss_over_plain": min(miss_s) / min(plain_s), "plain_over_hit": min(plain_s) / min(hit_s),
        "min_cosine_store_vs_plain": agree,
    }
    print(f"plain loop   {result['plain_seconds']:.2f} s  ({args.images / result['plain_seconds']:.0f} img/s)")
    print(f"store, miss  {result['store_miss_seconds']:.2f} s  -> {result['miss_over_plain']:.2f}x the plain time")
    print(f"store, hit   {result['store_hit_seconds']:.4f} s  -> {result['plain_over_hit']:.0f}x faster than plain")
    print(f"features agree: min cosine {agree:.4f} (store keeps float16)")
    out = Path(__file__).parent / "results" / "feature_store.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
