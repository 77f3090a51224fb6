"""Extraction throughput: open_clip loop, PIL store, overlapped pipeline, WebDataset shards, Ray, CPU stages.

    python benchmarks/extraction.py --threads 1,2                     # CPU (this machine): vlkit-mini
    python benchmarks/extraction.py --device cuda --model ViT-B-16 --images 4096 --batch-size 256

Writes ``benchmarks/results/extraction.json`` (``--out`` elsewhere; the convention of
``benchmarks/README.md``) with one row per (source, path, views, threads). On a folder of
``--images`` photo-like JPEGs it generates deterministically (500x375 and 375x500, seeded):

- ``plain_open_clip``: PIL decode + ``preprocess`` in a DataLoader + the model, no store;
- ``pil_store``: the feature store's PIL DataLoader path (``VLKIT_GPU_DECODE=0``);
- ``pipeline``: the store through :mod:`vlkit.features.pipeline` (its default for JPEG
  files on the CPU and on CUDA): 1 view, and ``--views`` augmented views
  (``FeatureStore.views``: the eval view + the augmented ones, one read and decode per image);
- ``shards_store``: the same images as WebDataset shards (``--data`` shards; members read by
  offset, decoded by PIL), 1 view and ``--views`` views;
- ``ray_1_worker`` / ``ray_2_workers``: ``--engine ray`` on a local cluster (whole call, cluster
  start included; ``pipeline_images_per_s`` without it), once, outside the CPU budgets;
- ``encoder_bound``: ``encode_images`` on tensors already on the device (the ceiling);
- CPU-side stages alone: file reads on 1/2/4 threads and the bounded-queue hand-off to a
  no-op consumer, against the encoder-bound rate (the issue's must-show when there is no GPU).

Rates are images/s; with several views, view-images/s ("per view": images x views / s),
the number to hold against the encoder-bound rate. ``--threads`` runs the CPU rows under
each CPU budget: the process is pinned to that many cores (``sched_setaffinity``) and
torch uses that many threads. Each row is one function in :data:`ROWS` (name ->
function of a :class:`Bench`).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
H200_ENCODER_PER_S = 6966.0  # issue 17: ViT-B-16 bf16 encode_images on an H200 (gpu_check.py)


@dataclass
class Bench:
    """What every row needs: the backbone, the JPEG folder as a dataset, and the run's settings."""

    backbone: Any
    paths: list[str]
    dataset: Any
    batch_size: int
    views: int  # augmented views of the multi-view rows
    workers: int  # DataLoader workers / read threads of the rows (set per CPU budget)
    tmp: Path
    reference: dict[str, torch.Tensor] = field(default_factory=dict)  # PIL-path features, to check agreement

    @property
    def cuda(self) -> bool:
        return self.backbone.device.type == "cuda"


# ---- the JPEG folder -------------------------------------------------------------------------
def _write_jpeg(job: tuple[str, int, int, int]) -> str:
    from PIL import Image

    path, width, height, seed = job
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    freq = rng.uniform(0.005, 0.05, 3)
    image = np.stack([127 + 100 * np.sin(xx * freq[0] + yy * freq[1] + c) for c in range(3)], -1)
    image += rng.normal(0, 12, image.shape)  # texture: decode cost closer to photos than flat colour
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def make_jpegs(folder: Path, count: int, workers: int = 1) -> list[str]:
    """``count`` photo-like JPEGs in 10 class folders: 500x375, every third 375x500; seeded by index."""
    jobs = [(str(folder / f"c{i % 10}" / f"{i}.jpg"), 375 if i % 3 == 0 else 500, 500 if i % 3 == 0 else 375, i)
            for i in range(count)]
    for c in range(10):
        (folder / f"c{c}").mkdir(parents=True, exist_ok=True)
    if workers <= 1:
        return [_write_jpeg(job) for job in jobs]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(_write_jpeg, jobs, chunksize=32))


def jpeg_dataset(paths: list[str]) -> Any:
    from vlkit.data import ImageDataset

    return ImageDataset([(p, int(Path(p).parent.name[1:])) for p in paths], [f"c{i}" for i in range(10)],
                        name="extraction-jpegs")


# ---- helpers -----------------------------------------------------------------------------------
def _sync(bench: Bench) -> None:
    if bench.cuda:
        torch.cuda.synchronize()


def timed(bench: Bench, fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of ``fn()`` (CUDA synchronised before and after) and its result."""
    _sync(bench)
    start = time.perf_counter()
    out = fn()
    _sync(bench)
    return time.perf_counter() - start, out


@contextlib.contextmanager
def decode_route(value: str) -> Iterator[None]:
    """``VLKIT_GPU_DECODE`` set to ``value`` inside the block (``0``: the PIL path; ``1``: the pipeline)."""
    before = os.environ.get("VLKIT_GPU_DECODE")
    os.environ["VLKIT_GPU_DECODE"] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("VLKIT_GPU_DECODE", None)
        else:
            os.environ["VLKIT_GPU_DECODE"] = before


def _store_pass(bench: Bench, route: str, views: int) -> tuple[float, torch.Tensor]:
    """Seconds to extract view 0 (``views=0``) or view 0 + ``views`` augmented views into a fresh store."""
    from vlkit.features.store import FeatureStore

    with tempfile.TemporaryDirectory(dir=bench.tmp) as root, decode_route(route):
        store = FeatureStore(root, num_workers=bench.workers, batch_size=bench.batch_size,
                             shard_size=max(len(bench.paths), 1))
        if views == 0:
            return timed(bench, lambda: store.image_features(bench.backbone, bench.dataset)[:, None])
        return timed(bench, lambda: store.views(bench.backbone, bench.dataset, views)[0])  # (N, 1 + V, D)


def _agreement(bench: Bench, key: str, feats: torch.Tensor) -> float | None:
    """Minimum per-image cosine between ``feats`` and the PIL store's features of the same views."""
    ref = bench.reference.get(key)
    if ref is None:
        bench.reference[key] = feats
        return None
    return float(torch.nn.functional.cosine_similarity(feats.float(), ref.float(), dim=-1).min())


# ---- the rows: each a function of the bench, returning its measurements ------------------------------
def row_plain_open_clip(bench: Bench) -> dict[str, Any]:
    """PIL decode + ``preprocess`` in a DataLoader, then the model; no store (the user's own loop)."""
    from torch.utils.data import DataLoader

    from vlkit.features.store import _ImageTensors

    loader = DataLoader(_ImageTensors(bench.dataset, bench.backbone.preprocess, 0, len(bench.paths), None),
                        batch_size=bench.batch_size, num_workers=bench.workers, pin_memory=bench.cuda)

    def run() -> int:
        with torch.no_grad():
            return sum(len(bench.backbone.encode_images(batch)) for batch in loader)

    seconds, count = timed(bench, run)
    return {"views": 1, "seconds": seconds, "images_per_s": count / seconds}


def row_pil_store(bench: Bench, views: int = 0) -> dict[str, Any]:
    """The store's PIL DataLoader path (what a CPU machine, or a non-JPEG folder, runs)."""
    seconds, feats = _store_pass(bench, "0", views)
    _agreement(bench, f"views{views}", feats)
    count = len(bench.paths) * feats.shape[1]
    return {"views": feats.shape[1], "seconds": seconds, "images_per_s": count / seconds}


def row_pipeline(bench: Bench, views: int = 0) -> dict[str, Any]:
    """The store through the overlapped pipeline (its default for JPEG files, on the CPU and on CUDA)."""
    seconds, feats = _store_pass(bench, "1", views)
    count = len(bench.paths) * feats.shape[1]
    return {"views": feats.shape[1], "seconds": seconds, "images_per_s": count / seconds,
            "cosine_min_vs_pil": _agreement(bench, f"views{views}", feats)}


def row_encoder_bound(bench: Bench, seconds: float = 3.0) -> dict[str, Any]:
    """``encode_images`` on (B, 3, S, S) tensors already on the device."""
    side = bench.backbone.image_size
    x = torch.randn(bench.batch_size, 3, side, side, device=bench.backbone.device)
    with torch.no_grad():
        bench.backbone.encode_images(x)  # warm-up
        _sync(bench)
        count, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds:
            bench.backbone.encode_images(x)
            count += len(x)
        _sync(bench)
    elapsed = time.perf_counter() - start
    return {"views": 1, "seconds": elapsed, "images_per_s": count / elapsed}


def row_reads(bench: Bench, threads: int, repeats: int = 5) -> dict[str, Any]:
    """File reads alone (the pipeline's first stage) on ``threads`` threads, best of ``repeats`` passes;
    the files are in the page cache (just written)."""
    from vlkit.features.gpu_decode import prefetched_bytes, read_bytes_or_none

    passes = [timed(bench, lambda: sum(len(b) for b in prefetched_bytes(
        bench.paths, bench.batch_size, threads, reader=read_bytes_or_none))) for _ in range(repeats)]
    seconds, count = min(passes)
    return {"views": 1, "seconds": seconds, "images_per_s": count / seconds, "read_threads": threads}


def row_queue_handoff(bench: Bench, handoffs: int = 2000) -> dict[str, Any]:
    """Batches of file bytes (read once beforehand) through a pipeline stage to a no-op consumer: the
    cost of the bounded queues and stage threads alone, in images/s at the bench's batch size."""
    from vlkit.features.gpu_decode import prefetched_bytes
    from vlkit.features.pipeline import run_stages

    batches = list(prefetched_bytes(bench.paths, bench.batch_size, 0))
    repeats = max(1, handoffs // len(batches))
    source = [batch for _ in range(repeats) for batch in batches]
    seconds, count = timed(bench, lambda: sum(len(b) for b in run_stages(source, [lambda b: b])))
    return {"views": 1, "seconds": seconds, "images_per_s": count / seconds}


def shard_dataset(bench: Bench) -> Any:
    """The same JPEGs as WebDataset shards (image + ``.cls``, 64 a shard, ``classnames.txt``), read by ``--data``."""
    if "shards" not in bench.reference:
        import io
        import tarfile

        from vlkit.data.resolve import load_data

        folder = bench.tmp / "shards"
        folder.mkdir(exist_ok=True)
        for number, start in enumerate(range(0, len(bench.paths), 64)):
            with tarfile.open(folder / f"shards-{number:06d}.tar", "w") as tar:
                for path in bench.paths[start:start + 64]:
                    key = Path(path).stem
                    for member, payload in ((f"{key}.jpg", Path(path).read_bytes()),
                                            (f"{key}.cls", Path(path).parent.name[1:].encode())):
                        info = tarfile.TarInfo(member)
                        info.size = len(payload)
                        tar.addfile(info, io.BytesIO(payload))
        (folder / "classnames.txt").write_text("".join(f"c{i}\n" for i in range(10)))
        bench.reference["shards"] = load_data(str(folder), "all")
    return bench.reference["shards"]


def row_shards(bench: Bench, views: int = 0) -> dict[str, Any]:
    """The store reading the same images from WebDataset shards (members read by offset, decoded by PIL)."""
    from vlkit.features.store import FeatureStore

    dataset = shard_dataset(bench)  # the index pass is not timed: it is cached after the first run
    with tempfile.TemporaryDirectory(dir=bench.tmp) as root:
        store = FeatureStore(root, num_workers=bench.workers, batch_size=bench.batch_size,
                             shard_size=max(len(bench.paths), 1))
        extract = (lambda: store.image_features(bench.backbone, dataset)[:, None]) if views == 0 else \
            (lambda: store.views(bench.backbone, dataset, views)[0])
        seconds, feats = timed(bench, extract)
    count = len(bench.paths) * feats.shape[1]
    return {"views": feats.shape[1], "seconds": seconds, "images_per_s": count / seconds}


def row_ray(bench: Bench, workers: int) -> dict[str, Any]:
    """``--engine ray`` on a local cluster of ``workers`` encoders (1 thread each): the whole call, cluster start
    included, and the Ray Data pipeline alone (worker start and model load included)."""
    from vlkit.features.ray_engine import extract_with_ray
    from vlkit.features.store import FeatureStore

    with tempfile.TemporaryDirectory(dir=bench.tmp) as root:
        store = FeatureStore(root, batch_size=bench.batch_size, shard_size=max(1, len(bench.paths) // 4))
        stats = extract_with_ray(bench.backbone, bench.dataset, store, workers)
    return {"views": 1, "seconds": stats["seconds"], "images_per_s": stats["images_per_second"],
            "cluster_seconds": stats["cluster_seconds"], "pipeline_images_per_s": stats["pipeline_images_per_second"]}


# name -> (source, function); each row returns its seconds and images/s (per view with several views)
ROWS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {
    "plain_open_clip": ("jpeg folder", row_plain_open_clip),
    "pil_store": ("jpeg folder", row_pil_store),
    "pipeline": ("jpeg folder", row_pipeline),
    "pil_store_views": ("jpeg folder", lambda b: row_pil_store(b, b.views)),
    "pipeline_views": ("jpeg folder", lambda b: row_pipeline(b, b.views)),
    "shards_store": ("webdataset shards", row_shards),
    "shards_store_views": ("webdataset shards", lambda b: row_shards(b, b.views)),
}
RAY_ROWS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {  # run once, outside the CPU budgets
    "ray_1_worker": ("jpeg folder", lambda b: row_ray(b, 1)),
    "ray_2_workers": ("jpeg folder", lambda b: row_ray(b, 2)),
}
ENCODER_ROW = ("device tensors", row_encoder_bound)
STAGE_ROWS: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]] = {
    "reads_1_thread": ("jpeg folder", lambda b: row_reads(b, 1)),
    "reads_2_threads": ("jpeg folder", lambda b: row_reads(b, 2)),
    "reads_4_threads": ("jpeg folder", lambda b: row_reads(b, 4)),
    "queue_handoff": ("bytes in memory", row_queue_handoff),
}


@contextlib.contextmanager
def cpu_budget(threads: int) -> Iterator[None]:
    """Pin the process (and the DataLoader workers it starts) to ``threads`` cores, torch to ``threads`` threads."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    torch_threads = torch.get_num_threads()
    if cores:
        os.sched_setaffinity(0, cores[:threads])
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        if cores:
            os.sched_setaffinity(0, cores)
        torch.set_num_threads(torch_threads)


def warm_up(bench: Bench) -> None:
    """One batch through each store path, untimed (imports, kernels, allocator, first DataLoader)."""
    few = Bench(bench.backbone, bench.paths[:bench.batch_size], jpeg_dataset(bench.paths[:bench.batch_size]),
                bench.batch_size, 1, bench.workers, bench.tmp)
    for route in ("0", "1"):
        _store_pass(few, route, 1)


def run_rows(bench: Bench, rows: dict[str, tuple[str, Callable[[Bench], dict[str, Any]]]],
             label: dict[str, Any]) -> list[dict[str, Any]]:
    """Run each row once, in order; a row that raises is recorded with its error, not fatal."""
    out = []
    for name, (source, fn) in rows.items():
        try:
            measured = fn(bench)
        except Exception as exc:  # noqa: BLE001 - one broken row must not lose the others
            measured = {"error": f"{type(exc).__name__}: {exc}"}
        row = {"row": name, "source": source, **label, **measured}
        print(json.dumps(row), flush=True)
        out.append(row)
    return out


def _machine(device: torch.device) -> str:
    gpu = f"{torch.cuda.get_device_name(device)}, " if device.type == "cuda" else ""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{gpu}{platform.machine()}, {cores} cores (load {load:.1f} at start, shared), "
            f"torch {torch.__version__}")


def budgets_max(rate: dict[tuple[str, Any], Any]) -> Any:
    """The largest CPU budget the rows ran under (None on CUDA)."""
    budgets = [t for (_, t) in rate if t is not None]
    return max(budgets) if budgets else None


def ratios_of(rows: list[dict[str, Any]], encoder: float, cuda: bool) -> dict[str, float]:
    """Headline ratios: the pipeline (and the CPU-side stages) over the encoder-bound rate and the PIL store."""
    rate = {(r["row"], r.get("threads")): r.get("images_per_s") for r in rows}
    out: dict[str, float] = {}
    for (name, threads), value in rate.items():
        if value is None:
            continue
        tag = "" if threads is None else f"_{threads}t"
        if name.startswith("shards_store"):
            folder = rate.get(("pil_store" + name[len("shards_store"):], threads))
            if folder:
                out[f"{name}_over_folder_pil_store{tag}"] = value / folder
        if name.startswith("ray_"):
            local = rate.get(("pipeline", budgets_max(rate)))
            if local:
                out[f"{name}_over_local_pipeline"] = value / local
        if name in ("pipeline", "pipeline_views"):
            pil = rate.get(("pil_store" + name[len("pipeline"):], threads))
            if pil:
                out[f"{'cpu_' if not cuda else ''}{name}_over_pil_store{tag}"] = value / pil
            if cuda:
                out[f"{name}_over_encoder"] = value / encoder
        if name.startswith("reads_") or name == "queue_handoff":
            out[f"{name}_over_encoder"] = value / encoder
            if not cuda:
                out[f"{name}_over_h200_encoder"] = value / H200_ENCODER_PER_S
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="vlkit-mini")
    parser.add_argument("--pretrained", default=None)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--images", type=int, default=256, help="JPEGs in the generated folder")
    parser.add_argument("--views", type=int, default=10, help="augmented views of the multi-view rows")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--threads", default="1", help="CPU budgets to run the CPU rows under, e.g. 1,2")
    parser.add_argument("--workers", type=int, default=None, help="read threads / loader workers on CUDA "
                        "(default: CPUs - 1, at most 8); on the CPU each budget uses its thread count - 1")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray rows (they need vlkit[ray])")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "extraction.json")
    args = parser.parse_args()
    import vlkit

    started = time.perf_counter()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA device: run on the CPU (the default) instead")
    budgets = [int(t) for t in args.threads.split(",")] if device.type == "cpu" else [None]
    backbone = vlkit.load_backbone(args.model, args.pretrained, device=str(device))
    result: dict[str, Any] = {
        "benchmark": "extraction", "command": shlex.join(["python", *sys.argv]), "machine": _machine(device),
        "title": "feature extraction: plain open_clip loop, PIL store, overlapped pipeline, CPU-side stages",
        "date": time.strftime("%Y-%m-%d"), "model": args.model, "images": args.images,
        "image_size": "500x375 / 375x500 JPEG, quality 90", "batch_size": args.batch_size, "views": args.views,
        "cuda": device.type == "cuda"}
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_jpegs(Path(tmp) / "jpegs", args.images, workers=min(4, os.cpu_count() or 1))
        default_workers = min(8, max(1, (os.cpu_count() or 1) - 1))
        bench = Bench(backbone, paths, jpeg_dataset(paths), args.batch_size, args.views,
                      args.workers if args.workers is not None else default_workers, Path(tmp))
        rows: list[dict[str, Any]] = []
        for threads in budgets:
            with cpu_budget(threads) if threads else contextlib.nullcontext():
                if threads:
                    bench.workers = threads - 1  # DataLoader workers beside the main process
                label = {"device": device.type, "threads": threads}
                warm_up(bench)
                encoder = run_rows(bench, {"encoder_bound": ENCODER_ROW}, label)
                rows += encoder + run_rows(bench, ROWS, label)
        encoder_rate = max(r["images_per_s"] for r in rows if r["row"] == "encoder_bound")
        rows += run_rows(bench, STAGE_ROWS, {"device": "cpu", "threads": None})  # every core the process has
        if not args.no_ray:
            rows += run_rows(bench, RAY_ROWS, {"device": device.type, "threads": None})
    for row in rows:
        if "images_per_s" in row:
            row["over_encoder"] = row["images_per_s"] / encoder_rate
    result["rows"] = rows
    result["encoder_per_s"] = encoder_rate
    result["ratios"] = ratios_of(rows, encoder_rate, device.type == "cuda")
    if device.type == "cuda":
        result["claim"] = ("issue 17: pipeline_over_encoder >= 0.85 and pipeline_views_over_encoder >= 0.8 "
                           "(per view), cosine_min_vs_pil >= 0.99")
    else:
        stages = [r for r in rows if r["row"] in STAGE_ROWS and "images_per_s" in r]
        slowest = min(stages, key=lambda r: r["images_per_s"]) if stages else None
        result["claim"] = (
            "no CUDA GPU here, so no GPU figures. The CPU-side stages timed alone are not the limit: the slowest "
            + (f"({slowest['row']}, {slowest['images_per_s']:.0f}/s) runs {slowest['over_encoder']:.1f}x the "
               f"encoder-bound rate here and {slowest['images_per_s'] / H200_ENCODER_PER_S:.2f}x the H200's "
               f"({H200_ENCODER_PER_S:.0f}/s, issue 17, whose host read 8.8k-13k files/s); " if slowest else "")
            + "cpu_pipeline*_over_pil_store* chose the CPU default (the pipeline: above 1 at 1 and 2 threads)")
    result["load_at_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    result["total_seconds"] = time.perf_counter() - started
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"wrote {args.out} in {result['total_seconds']:.0f}s", flush=True)
    if args.out.resolve().parent == (ROOT / "benchmarks" / "results").resolve():
        subprocess.run([sys.executable, str(ROOT / "benchmarks" / "make_results.py")], check=False)


if __name__ == "__main__":
    main()
