"""Images/s reading the same JPEGs from a folder and from WebDataset shards, on one thread.

Writes ``--images`` JPEGs (500x375, as benchmarks/gpu_check.py's set) into a class folder
tree and the same files into shards of ``--per-shard`` samples, then times on one thread:
the shard index pass (first load: webdataset stream + tar headers) and the cached load;
reading each item's bytes (``open``/``read`` of a file vs one seek into a shard); and
reading + decoding to RGB (``dataset.image(i)``, what the feature store's workers call); and
the feature store end to end with ``--model`` (no DataLoader workers, a fresh store each pass).
Each timing is the best of ``--repeats`` passes over a warm page cache, folder and shards
alternating.

    python scripts/shard_read_speed.py --images 1000 --output docs/shard_read_speed.json
"""
from __future__ import annotations

import argparse
import io
import json
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image


def write_images(root: Path, n: int, classes: int = 4, seed: int = 0) -> list[tuple[str, bytes, int]]:
    """``n`` smooth-noise JPEGs of 500x375 as ``root/<class>/<name>.jpg``; returns (name, bytes, label)
    in folder order."""
    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        label = i * classes // n
        small = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize((500, 375), Image.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90)
        name = f"c{label}_{i:06d}.jpg"
        (root / f"c{label}").mkdir(parents=True, exist_ok=True)
        (root / f"c{label}" / name).write_bytes(buffer.getvalue())
        files.append((name, buffer.getvalue(), label))
    return files


def write_shards(folder: Path, files: list[tuple[str, bytes, int]], per_shard: int) -> None:
    """``files`` as ``shards-NNNNNN.tar`` (image + ``.cls``) with ``classnames.txt``."""
    folder.mkdir(parents=True, exist_ok=True)
    for number, start in enumerate(range(0, len(files), per_shard)):
        with tarfile.open(folder / f"shards-{number:06d}.tar", "w") as tar:
            for name, data, label in files[start:start + per_shard]:
                for member, payload in ((name, data), (f"{name.split('.')[0]}.cls", str(label).encode())):
                    info = tarfile.TarInfo(member)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
    labels = sorted({label for _, _, label in files})
    (folder / "classnames.txt").write_text("".join(f"c{label}\n" for label in labels))


def best_rates(n: int, runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, int]:
    """Items per second of the fastest of ``repeats`` calls of each run (each handles ``n`` items);
    the runs alternate within each repeat, so a busy machine slows them alike."""
    best = {name: float("inf") for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            best[name] = min(best[name], time.perf_counter() - start)
    return {name: round(n / seconds) for name, seconds in best.items()}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--per-shard", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--model", default="vlkit-mini", help="also time FeatureStore.image_features ('' to skip)")
    ap.add_argument("--output", type=Path, default=None)
    args = ap.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="shard-speed-"))
    os.environ["VLKIT_CACHE"] = str(work / "cache")
    from vlkit.data.resolve import load_data

    files = write_images(work / "folder", args.images)
    write_shards(work / "shards", files, args.per_shard)
    start = time.perf_counter()
    shards = load_data(str(work / "shards"), "all")
    index_first = time.perf_counter() - start
    start = time.perf_counter()
    load_data(str(work / "shards"), "all")
    index_cached = time.perf_counter() - start
    folder = load_data(str(work / "folder"), "all")
    n = len(folder)
    if [Path(src).name for src, _ in folder.items] != [src.member for src, _ in shards.items]:
        raise SystemExit("the folder and the shards hold the images in another order")

    def read_files() -> None:
        for src, _ in folder.items:
            with open(src, "rb") as handle:
                handle.read()

    def read_members() -> None:
        for src, _ in shards.items:
            src.read_bytes()

    result = {
        "command": f"python scripts/shard_read_speed.py --images {args.images} --per-shard {args.per_shard} "
                   f"--repeats {args.repeats}",
        "images": n, "image_size": [500, 375],
        "shard_bytes": sum(p.stat().st_size for p in (work / "shards").glob("*.tar")),
        "threads": 1,
        "index_first_load_samples_per_s": round(n / index_first),
        "index_cached_load_samples_per_s": round(n / index_cached),
        **best_rates(n, {"read_bytes_folder_per_s": read_files, "read_bytes_shards_per_s": read_members}, args.repeats),
        **best_rates(n, {"read_decode_folder_per_s": lambda: [folder.image(i) for i in range(n)],
                         "read_decode_shards_per_s": lambda: [shards.image(i) for i in range(n)]}, args.repeats),
    }
    if args.model:  # end to end through the feature store: decode, preprocess, encode, write
        from vlkit.backbones import load_backbone
        from vlkit.features.store import FeatureStore

        backbone = load_backbone(args.model, device="cpu")
        FeatureStore(work / "store-warmup", num_workers=0).image_features(backbone, folder.subset(range(32), "warmup"))

        def encode(dataset) -> Callable[[], None]:  # a fresh store each call: always a cache miss
            return lambda: FeatureStore(tempfile.mkdtemp(dir=work), num_workers=0).image_features(backbone, dataset)

        rates = best_rates(n, {"store_folder_per_s": encode(folder), "store_shards_per_s": encode(shards)},
                           args.repeats)
        result.update(model=args.model, **rates)
    if args.output:
        args.output.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
