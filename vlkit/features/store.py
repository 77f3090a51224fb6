"""The feature store: encode images once, read them memory-mapped forever after.

An entry is keyed by backbone fingerprint + dataset identity + transform + view.
Each entry is a folder of shards plus ``meta.json``: ``shard-00000.npy`` holds the
rows' L2-normalised features (n, D) float16, ``norms-00000.npy`` their L2 norms
before normalising (n,) float32, so the raw feature is ``norm * unit`` (Tip-Adapter's
keys average raw views, then normalise). Shards and the sidecar are written to a temp
file and renamed, so a half-written file is never read; a killed extraction resumes
from its finished shards. The sidecar records each file's size and sha256: a file of
the wrong size, or whose bytes no longer match its checksum, is re-encoded (with a
warning), never served. The checksum is verified on the first read of a file in a
process and again whenever its size, mtime, ctime or inode changes (hashing is about as
costly as loading: 3 ms per 2048 x 512 float16 shard on a busy 2-core machine, so
a bench that re-reads an entry per cell does not re-hash it each time).

Extraction: a folder of JPEG files goes through :mod:`vlkit.features.pipeline` (file reads,
batched decode and every view built on the backbone's device, encoding, overlapped), one
read and decode per image for all the views :meth:`FeatureStore.views` is missing; other
images (PNG, in memory) and ``VLKIT_GPU_DECODE=0`` take the PIL DataLoader path. Both give
each view's entry the same key and files (features agree to cosine >= 0.99 per image).

Per-layer features (:meth:`FeatureStore.layer_features`, see
:mod:`vlkit.features.layer_features`) live beside them under ``layers/``: one entry per
(image set, view, block) holding ``tokens.npy`` (n, 2, W) float16 and a checksummed
``meta.json``; one pass of the tower writes every missing layer.

Format version 2 (the norms) is part of the key: entries written by version 1
(features only) are never read, and are re-encoded on first use.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import shutil
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from vlkit.backbones import Backbone
from vlkit.data.dataset import ImageDataset
from vlkit.errors import BackboneMismatchError, DataError
from vlkit.features.layer_features import POOLING, layer_shape, layer_tokens
from vlkit.features.gpu_augment import view_seed
from vlkit.features.pipeline import encode_view_chunks, pipeline_paths
from vlkit.io import atomic_write_bytes, atomic_write_json, cache_root
from vlkit.progress import progress

log = logging.getLogger("vlkit.features.store")
STORE_VERSION = 2  # 2: per-row norms beside the features
_VERIFIED: dict[str, tuple] = {}  # path -> (size, mtime_ns, ctime_ns, inode, sha256) when its checksum last matched


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _shard_path(entry: Path, shard: int, kind: str) -> Path:
    """``shard-00000.npy`` (normalised features) or ``norms-00000.npy`` (their norms) of an entry."""
    return entry / f"{kind}-{shard:05d}.npy"


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    return digest.hexdigest()


def _stamp(stat: os.stat_result, digest: str) -> tuple:
    return stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino, digest


class _ImageTensors(Dataset):
    """Decode + transform items ``[start, stop)`` of a dataset (DataLoader workers run this)."""

    def __init__(self, dataset: ImageDataset, transform, start: int, stop: int, seed: int | None) -> None:
        self.dataset, self.transform, self.start, self.stop, self.seed = dataset, transform, start, stop, seed

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        index = self.start + i
        if self.seed is not None:  # augmented view: a fixed seed per (view, image)
            torch.manual_seed(view_seed(self.seed, index))
        return self.transform(self.dataset.image(index))


class FeatureStore:
    """Disk cache of image and text features (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, shard_size: int = 2048, num_workers: int | None = None,
                 batch_size: int = 256, engine: object | None = None) -> None:
        """``engine``: None encodes in this process; a :class:`~vlkit.features.ray_engine.RayEngine`
        (see ``feature_engine``) encodes the missing shards on a Ray cluster (same keys, files and records)."""
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.num_workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
        self.engine = engine
        self.hits = 0
        self.misses = 0

    # ---- keys -------------------------------------------------------------------
    def entry_dir(self, backbone: Backbone, dataset: ImageDataset, view: int) -> Path:
        """Folder of one entry; view 0 is the evaluation transform, views >= 1 augmented.

        The key holds the transform itself (the backbone's preprocessing config, and the
        augmentation for views >= 1), so the same weights under another preprocessing
        never read these features.
        """
        transform = "eval" if view == 0 else f"aug{view}"
        signature = backbone.transform_signature(train=view > 0)
        key = f"{backbone.fingerprint}|{dataset.identity}|{transform}|{signature}|{STORE_VERSION}"
        digest = hashlib.sha256(key.encode()).hexdigest()[:24]
        return self.root / "features" / backbone.fingerprint / digest

    # ---- image features ------------------------------------------------------------
    def image_features(self, backbone: Backbone, dataset: ImageDataset, view: int = 0) -> torch.Tensor:
        """(N, D) float32 L2-normalised features of every item in ``dataset`` for one view, cached."""
        entry, meta = self._entry(backbone, dataset, view)
        return self._load(entry, meta, "shard")

    def image_norms(self, backbone: Backbone, dataset: ImageDataset, view: int = 0) -> torch.Tensor:
        """(N,) float32 L2 norms of the features before normalising (same entry as ``image_features``)."""
        entry, meta = self._entry(backbone, dataset, view)
        return self._load(entry, meta, "norms")

    def views(self, backbone: Backbone, dataset: ImageDataset, views: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Features (N, 1 + views, D) and their norms (N, 1 + views): the eval view then ``views``
        augmented views, each entry checked once; missing views are encoded together (:meth:`_entries`)."""
        entries = self._entries(backbone, dataset, list(range(views + 1)))
        feats = [self._load(*entries[v], "shard") for v in range(views + 1)]  # (N, D) each
        norms = [self._load(*entries[v], "norms") for v in range(views + 1)]  # (N,) each
        return torch.stack(feats, dim=1), torch.stack(norms, dim=1)

    def view_features(self, backbone: Backbone, dataset: ImageDataset, views: int) -> torch.Tensor:
        """(N, 1 + views, D): the eval view then ``views`` augmented views, each cached."""
        return self.views(backbone, dataset, views)[0]

    def view_norms(self, backbone: Backbone, dataset: ImageDataset, views: int) -> torch.Tensor:
        """(N, 1 + views) pre-normalisation norms of ``view_features``' rows."""
        return self.views(backbone, dataset, views)[1]

    def _entry(self, backbone: Backbone, dataset: ImageDataset, view: int) -> tuple[Path, dict]:
        """The folder and sidecar of a complete, checked entry, encoding whatever is missing or damaged."""
        return self._entries(backbone, dataset, [view])[view]

    def _checked_entry(self, backbone: Backbone, dataset: ImageDataset, view: int) -> tuple[Path, dict | None]:
        """An entry's folder and its sidecar when the entry is complete and checked, else (folder, the sidecar
        of a partial entry or None); a corrupt complete entry is removed."""
        entry = self.entry_dir(backbone, dataset, view)
        meta = self._read_meta(entry / "meta.json")
        if meta is not None and meta.get("complete") and self._shards_valid(entry, meta, backbone):
            try:
                self._check_shapes(entry, meta)
                return entry, meta
            except (ValueError, OSError, EOFError):
                log.warning("feature entry %s is corrupt; re-encoding it", entry)
                shutil.rmtree(entry, ignore_errors=True)
                return entry, None
        return entry, (dict(meta, complete=False) if meta is not None else None)

    def _entries(self, backbone: Backbone, dataset: ImageDataset, views: list[int]) -> dict[int, tuple[Path, dict]]:
        """{view: (folder, sidecar)} of complete, checked entries, encoding whatever is missing or damaged.

        Each view keeps its own entry (same key and files as when encoded alone); the shards
        missing from several views are encoded in one pass over the images
        (:meth:`_encode_shards`: one read and decode for every view on the pipeline path).
        """
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name} is empty: nothing to encode")
        n_shards = (len(dataset) + self.shard_size - 1) // self.shard_size
        ready: dict[int, tuple[Path, dict]] = {}
        todo: dict[int, tuple[Path, dict, list[int]]] = {}  # view -> (folder, shard records, shards to encode)
        for view in dict.fromkeys(views):
            entry, meta = self._checked_entry(backbone, dataset, view)
            if meta is not None and meta.get("complete"):
                self.hits += 1
                ready[view] = (entry, meta)
                continue
            self.misses += 1
            usable = (meta and meta.get("fingerprint") == backbone.fingerprint
                      and meta.get("version") == STORE_VERSION and meta.get("shard_size") == self.shard_size)
            shards = dict(meta["shards"]) if usable else {}
            entry.mkdir(parents=True, exist_ok=True)
            todo[view] = (entry, shards, [s for s in range(n_shards) if not self._shard_ok(entry, str(s),
                                                                                             shards.get(str(s)))])
        if not todo:
            return ready
        names = ", ".join(map(str, todo)) if len(todo) <= 3 else f"{min(todo)}-{max(todo)}"
        label = f"view {names}" if len(todo) == 1 else f"views {names}"
        missing = sum(self._shard_len(s, len(dataset)) for _, _, shards in todo.values() for s in shards)
        with progress(total=len(dataset) * len(todo), description=f"encoding {dataset.name} {label}") as bar:
            bar.advance(len(dataset) * len(todo) - missing)
            if self.engine is not None:  # e.g. Ray: the same shards and pixels, encoded elsewhere, view by view
                self._encode_with_engine(backbone, dataset, todo, bar)
            else:
                self._encode_here(backbone, dataset, todo, bar)
        for view, (entry, shards, _) in todo.items():
            meta = self._meta(backbone, dataset, view, shards, complete=True)
            atomic_write_json(entry / "meta.json", meta)
            self._check_shapes(entry, meta)
            ready[view] = (entry, meta)
        return {view: ready[view] for view in dict.fromkeys(views)}

    def _encode_here(self, backbone: Backbone, dataset: ImageDataset,
                     todo: dict[int, tuple[Path, dict, list[int]]], bar) -> None:
        """Encode every view's missing shards in this process, one pass per run of shards missing the same views."""
        plan = [(shard, tuple(view for view, (_, _, shards) in todo.items() if shard in shards))
                for shard in sorted({s for _, _, shards in todo.values() for s in shards})]
        for wanted, group in itertools.groupby(plan, key=lambda item: item[1]):  # runs of one view set
            for shard, encoded in self._encode_shards(backbone, dataset, [s for s, _ in group], list(wanted), bar):
                for view in wanted:  # one read and decode for all of them
                    entry, shards, _ = todo[view]
                    shards[str(shard)] = self._write_shard(entry, shard, *encoded[view])
                    atomic_write_json(entry / "meta.json", self._meta(backbone, dataset, view, shards, complete=False))

    def _encode_with_engine(self, backbone: Backbone, dataset: ImageDataset,
                            todo: dict[int, tuple[Path, dict, list[int]]], bar) -> None:
        """Each view's missing shards through ``self.engine`` (pixels from the store's own transform and seeds)."""
        for view, (entry, shards, missing) in todo.items():
            if not missing:
                continue
            transform = backbone.preprocess if view == 0 else backbone.train_transform
            images = _ImageTensors(dataset, transform, 0, len(dataset), seed=view if view else None)

            def write(shard: int, feats: torch.Tensor, norms: torch.Tensor, entry: Path = entry,
                      shards: dict = shards, view: int = view) -> None:  # (n, D), (n,)
                shards[str(shard)] = self._write_shard(entry, shard, feats, norms)
                atomic_write_json(entry / "meta.json", self._meta(backbone, dataset, view, shards, complete=False))

            self.engine.encode_shards(images, backbone, dataset, missing, self.shard_size, self.batch_size, write,
                                      bar.advance)

    @staticmethod
    def _write_shard(entry: Path, shard: int, feats: torch.Tensor, norms: torch.Tensor) -> dict:
        """Write one shard's features (n, D) as float16 and norms (n,) as float32; return its record."""
        record = {}
        for kind, array in (("shard", feats.numpy().astype(np.float16)), ("norms", norms.numpy().astype(np.float32))):
            data = _npy_bytes(array)
            atomic_write_bytes(_shard_path(entry, shard, kind), data)
            prefix = "" if kind == "shard" else "norms_"
            record.update({f"{prefix}bytes": len(data), f"{prefix}sha256": hashlib.sha256(data).hexdigest()})
        return record

    def _shard_len(self, shard: int, total: int) -> int:
        return min(self.shard_size, total - shard * self.shard_size)

    def _encode_shards(self, backbone: Backbone, dataset: ImageDataset, shards: list[int], views: list[int],
                       bar) -> Iterator[tuple[int, dict[int, tuple[torch.Tensor, torch.Tensor]]]]:
        """(shard, {view: (normalised features (n, D), pre-normalisation norms (n,))}) for each of ``shards``.

        JPEG files (see :func:`pipeline_paths`) go through one overlapped pipeline over all
        ``shards``, one read and decode per image for every view (on the backbone's device:
        nvJPEG on CUDA); otherwise each shard and view is a PIL DataLoader pass, augmented
        views seeded per (view, image).
        """
        ranges = [(s * self.shard_size, min(len(dataset), (s + 1) * self.shard_size)) for s in shards]
        found = [pipeline_paths(backbone, dataset, start, stop) for start, stop in ranges]
        if all(paths is not None for paths in found):
            from torchvision.transforms.functional import pil_to_tensor

            def fallback(index: int) -> torch.Tensor:  # the PIL path's decode: same image, same errors
                return pil_to_tensor(dataset.image(index))  # (3, H, W) uint8

            paths = [p for part in found for p in part]
            indices = [i for start, stop in ranges for i in range(start, stop)]
            chunks = encode_view_chunks(backbone, paths, indices, views, fallback, [b - a for a, b in ranges],
                                        self.batch_size, on_batch=bar.advance)
            yield from zip(shards, chunks)
            return
        for shard, (start, stop) in zip(shards, ranges):
            yield shard, {view: self._encode_shard(backbone, dataset, view, start, stop, bar) for view in views}

    def _encode_shard(self, backbone: Backbone, dataset: ImageDataset, view: int, start: int, stop: int,
                      bar) -> tuple[torch.Tensor, torch.Tensor]:
        """The PIL path: normalised features (n, D) and norms (n,) of items ``[start, stop)`` for one view."""
        transform = backbone.preprocess if view == 0 else backbone.train_transform
        images = _ImageTensors(dataset, transform, start, stop, seed=view if view else None)
        workers = self.num_workers if stop - start > self.batch_size else 0
        batches = DataLoader(images, batch_size=self.batch_size, num_workers=workers,
                             pin_memory=backbone.device.type == "cuda", persistent_workers=False)
        feats, norms = [], []
        for batch in batches:  # (B, 3, H, W)
            unit, norm = backbone.encode_images_with_norms(batch)
            feats.append(unit.cpu())
            norms.append(norm.float().cpu())
            bar.advance(len(batch))
        return torch.cat(feats), torch.cat(norms)

    # ---- per-layer features -----------------------------------------------------------
    def layer_entry_dir(self, backbone: Backbone, dataset: ImageDataset, view: int, layer: int) -> Path:
        """Folder of one block's pooled tokens: the image entry's key plus the layer and the pooling."""
        transform = "eval" if view == 0 else f"aug{view}"
        signature = backbone.transform_signature(train=view > 0)
        key = (f"{backbone.fingerprint}|{dataset.identity}|{transform}|{signature}|{STORE_VERSION}"
               f"|layer{layer}|{POOLING}")
        return self.root / "layers" / backbone.fingerprint / hashlib.sha256(key.encode()).hexdigest()[:24]

    def layer_features(self, backbone: Backbone, dataset: ImageDataset, view: int = 0,
                       layers: list[int] | None = None) -> torch.Tensor:
        """(N, len(layers), 2, W) float32 pooled output tokens of image-tower blocks ``layers``
        (default: every block, first to last; negative counts from the end) for one view.

        Row 0 of the 2 is the class token, row 1 the patch-token mean. Each layer is one
        entry, cached once; a missing or damaged one is re-encoded together with any other
        missing layer in one pass of the frozen tower.
        """
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name} is empty: nothing to encode")
        depth, _, _ = layer_shape(backbone)
        wanted = list(range(depth)) if layers is None else [int(i) for i in layers]
        if any(not -depth <= i < depth for i in wanted):
            raise DataError(f"layers {wanted} out of range for an image tower of {depth} blocks")
        wanted = [i % depth for i in wanted]
        found = {i: self._read_layer(backbone, dataset, view, i) for i in dict.fromkeys(wanted)}
        missing = [i for i, tokens in found.items() if tokens is None]
        if missing:
            self.misses += 1
            found.update(self._encode_layers(backbone, dataset, view, missing))
        else:
            self.hits += 1
        return torch.stack([found[i] for i in wanted], dim=1)

    def _read_layer(self, backbone: Backbone, dataset: ImageDataset, view: int, layer: int) -> torch.Tensor | None:
        """(N, 2, W) float32 tokens of a complete, checked layer entry, or None."""
        entry = self.layer_entry_dir(backbone, dataset, view, layer)
        meta = self._read_meta(entry / "meta.json")
        shape = [len(dataset), *layer_shape(backbone)[1:]]
        if not meta or meta.get("shape") != shape or meta.get("fingerprint") != backbone.fingerprint:
            return None
        if not self._shard_ok(entry, "0", meta.get("record"), kinds=(("tokens", ""),)):
            return None
        try:
            array = np.load(_shard_path(entry, 0, "tokens"), mmap_mode="r")
        except (ValueError, OSError, EOFError):
            return None
        return torch.from_numpy(np.asarray(array, dtype=np.float32)) if list(array.shape) == shape else None

    def _encode_layers(self, backbone: Backbone, dataset: ImageDataset, view: int,
                       layers: list[int]) -> dict[int, torch.Tensor]:
        """Run the frozen tower once over ``dataset`` (view ``view``) and write entries ``layers``."""
        transform = backbone.preprocess if view == 0 else backbone.train_transform
        images = _ImageTensors(dataset, transform, 0, len(dataset), seed=view if view else None)
        workers = self.num_workers if len(dataset) > self.batch_size else 0
        parts = []
        with progress(total=len(dataset), description=f"encoding {dataset.name} view {view} layers") as bar:
            for batch in DataLoader(images, batch_size=self.batch_size, num_workers=workers):  # (B, 3, H, W)
                parts.append(layer_tokens(backbone, batch)[1].cpu())  # (B, depth, 2, W)
                bar.advance(len(batch))
        tokens = torch.cat(parts)  # (N, depth, 2, W)
        out = {}
        for layer in layers:
            entry = self.layer_entry_dir(backbone, dataset, view, layer)
            array = tokens[:, layer].numpy().astype(np.float16)  # (N, 2, W)
            data = _npy_bytes(array)
            atomic_write_bytes(_shard_path(entry, 0, "tokens"), data)
            atomic_write_json(entry / "meta.json", {
                "version": STORE_VERSION, "fingerprint": backbone.fingerprint, "dataset": dataset.identity,
                "view": view, "layer": layer, "pooling": POOLING, "shape": list(array.shape), "dtype": "float16",
                "record": {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}})
            out[layer] = torch.from_numpy(array.astype(np.float32))
        return out

    # ---- text features ---------------------------------------------------------------
    def text_features(self, backbone: Backbone, texts: list[str]) -> torch.Tensor:
        """(M, D) normalised text features, cached by backbone + exact strings."""
        digest = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:24]
        path = self.root / "features" / backbone.fingerprint / "text" / f"{digest}.npy"
        if path.is_file():
            try:
                array = np.load(path, allow_pickle=False)
                if array.shape == (len(texts), backbone.embed_dim):
                    self.hits += 1
                    return torch.from_numpy(array.astype(np.float32))
            except (ValueError, OSError, EOFError):
                log.warning("text cache %s is corrupt; re-encoding", path)
        self.misses += 1
        feats = backbone.encode_texts(texts).cpu()
        atomic_write_bytes(path, _npy_bytes(feats.numpy().astype(np.float32)))
        return feats

    # ---- integrity ----------------------------------------------------------------------
    def _meta(self, backbone: Backbone, dataset: ImageDataset, view: int, shards: dict, complete: bool) -> dict:
        return {"version": STORE_VERSION, "fingerprint": backbone.fingerprint, "dataset": dataset.identity,
                "view": view, "count": len(dataset), "dim": backbone.embed_dim, "dtype": "float16",
                "norms_dtype": "float32", "shard_size": self.shard_size, "shards": shards, "complete": complete}

    @staticmethod
    def _read_meta(path: Path) -> dict | None:
        try:
            meta = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None
        return meta if isinstance(meta, dict) else None

    def _shards_valid(self, entry: Path, meta: dict, backbone: Backbone) -> bool:
        if (meta.get("version") != STORE_VERSION or meta.get("fingerprint") != backbone.fingerprint
                or meta.get("dim") != backbone.embed_dim):
            return False
        try:
            n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
            return all(self._shard_ok(entry, str(s), meta["shards"].get(str(s))) for s in range(n_shards))
        except (KeyError, TypeError, AttributeError):
            return False

    @staticmethod
    def _shard_ok(entry: Path, shard: str, record: dict | None, verify_hash: bool = False,
                  kinds: tuple[tuple[str, str], ...] = (("shard", ""), ("norms", "norms_"))) -> bool:
        """Whether the files of a shard (``kinds``: file kind, record key prefix) match their record: size
        always, sha256 on the first read in this process (or every time with ``verify_hash``) and whenever
        the file's size, mtime or inode changed."""
        if not isinstance(record, dict):
            return False
        for kind, prefix in kinds:
            path = _shard_path(entry, int(shard), kind)
            try:
                stat = path.stat()
                size, digest = record[f"{prefix}bytes"], record[f"{prefix}sha256"]
            except (OSError, KeyError):
                return False
            if stat.st_size != size:
                log.warning("feature file %s has the wrong size; it will be re-encoded", path)
                return False
            seen = _VERIFIED.get(str(path))
            if not verify_hash and seen == _stamp(stat, digest):
                continue
            try:
                actual = _sha256_file(path)
            except OSError:
                return False
            if actual != digest:
                log.warning("feature file %s does not match its checksum; it will be re-encoded", path)
                _VERIFIED.pop(str(path), None)
                return False
            _VERIFIED[str(path)] = _stamp(stat, digest)
        return True

    @staticmethod
    def _check_shapes(entry: Path, meta: dict) -> None:
        """Raise ValueError unless the shards hold (count, dim) features and (count,) norms."""
        n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
        rows = 0
        for s in range(n_shards):
            feats = np.load(_shard_path(entry, s, "shard"), mmap_mode="r")  # (n, D)
            norms = np.load(_shard_path(entry, s, "norms"), mmap_mode="r")  # (n,)
            if feats.ndim != 2 or feats.shape[1] != meta["dim"] or norms.shape != (feats.shape[0],):
                raise ValueError(f"shard {s} of {entry} holds {feats.shape} features and {norms.shape} norms")
            rows += feats.shape[0]
        if rows != meta["count"]:
            raise ValueError(f"entry {entry} holds {rows} rows, expected {meta['count']}")

    def _load(self, entry: Path, meta: dict, kind: str) -> torch.Tensor:
        """(N, D) features (``kind="shard"``) or (N,) norms (``kind="norms"``) as float32."""
        n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
        parts = [np.load(_shard_path(entry, s, kind), mmap_mode="r") for s in range(n_shards)]
        return torch.from_numpy(np.concatenate(parts).astype(np.float32))

    def verify(self) -> list[Path]:
        """Check every shard's checksum; delete and return those that fail (rebuilt on next use)."""
        bad: list[Path] = []
        for meta_path in (self.root / "features").glob("*/*/meta.json"):
            meta = self._read_meta(meta_path)
            if meta is None:
                shutil.rmtree(meta_path.parent, ignore_errors=True)
                bad.append(meta_path.parent)
                continue
            if meta.get("version") != STORE_VERSION:
                continue  # an older format's entry: never read (its key differs), not damaged
            for shard, record in dict(meta.get("shards") or {}).items():
                if not self._shard_ok(meta_path.parent, shard, record, verify_hash=True):
                    for kind in ("shard", "norms"):
                        path = _shard_path(meta_path.parent, int(shard), kind)
                        if path.exists():
                            path.unlink()
                            bad.append(path)
        return bad

    def check_features(self, features: torch.Tensor, backbone: Backbone, what: str = "features") -> None:
        """Raise if ``features`` (N, D) cannot come from ``backbone`` (wrong width)."""
        if features.ndim < 2 or features.shape[-1] != backbone.embed_dim:
            raise BackboneMismatchError(
                f"{what} have width {features.shape[-1]} but {backbone.name} gives {backbone.embed_dim}: "
                "they come from another backbone; re-extract them with this model"
            )

    def entries(self) -> Iterator[dict]:
        """Every entry's sidecar (for ``vlkit features list``)."""
        for meta_path in sorted((self.root / "features").glob("*/*/meta.json")):
            meta = self._read_meta(meta_path)
            if meta:
                yield {**meta, "path": str(meta_path.parent)}
