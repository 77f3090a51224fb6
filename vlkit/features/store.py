"""The feature store: encode images once, read them memory-mapped forever after.

An entry is keyed by backbone fingerprint + dataset identity + transform + view.
Each entry is a folder of shards (``shard-00000.npy`` ...) plus ``meta.json``;
shards and the sidecar are written to a temp file and renamed, so a half-written
file is never read. A killed extraction resumes from its finished shards. Each
shard's size and checksum are recorded; a shard that fails the check is re-encoded.
"""
from __future__ import annotations

import hashlib
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
from vlkit.features.gpu_decode import gpu_image_batches, gpu_paths_for, preprocess_params
from vlkit.io import atomic_write_bytes, atomic_write_json, cache_root
from vlkit.progress import progress

log = logging.getLogger("vlkit.features.store")
STORE_VERSION = 1


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


class _ImageTensors(Dataset):
    """Decode + transform items ``[start, stop)`` of a dataset (DataLoader workers run this)."""

    def __init__(self, dataset: ImageDataset, transform, start: int, stop: int, seed: int | None) -> None:
        self.dataset, self.transform, self.start, self.stop, self.seed = dataset, transform, start, stop, seed

    def __len__(self) -> int:
        return self.stop - self.start

    def __getitem__(self, i: int) -> torch.Tensor:
        index = self.start + i
        if self.seed is not None:  # augmented view: a fixed seed per (view, image)
            torch.manual_seed(self.seed * 1_000_003 + index)
        return self.transform(self.dataset.image(index))


class FeatureStore:
    """Disk cache of image and text features (see the module docstring)."""

    def __init__(self, root: str | Path | None = None, shard_size: int = 2048, num_workers: int | None = None,
                 batch_size: int = 256) -> None:
        self.root = Path(root).expanduser() if root is not None else cache_root()
        self.shard_size = shard_size
        self.batch_size = batch_size
        self.num_workers = min(4, max(0, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
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
        """(N, D) float32 features of every item in ``dataset`` for one view, cached."""
        if len(dataset) == 0:
            raise DataError(f"dataset {dataset.name} is empty: nothing to encode")
        entry = self.entry_dir(backbone, dataset, view)
        meta_path = entry / "meta.json"
        n_shards = (len(dataset) + self.shard_size - 1) // self.shard_size
        meta = self._read_meta(meta_path)
        if meta is not None and meta.get("complete") and self._shards_valid(entry, meta, backbone):
            try:
                loaded = self._load(entry, meta)
                self.hits += 1
                return loaded
            except (ValueError, OSError, EOFError):
                log.warning("feature entry %s is corrupt; re-encoding it", entry)
                shutil.rmtree(entry, ignore_errors=True)
                meta = None
        self.misses += 1
        meta = meta if meta and meta.get("fingerprint") == backbone.fingerprint else None
        shards = dict(meta["shards"]) if meta else {}
        entry.mkdir(parents=True, exist_ok=True)
        todo = [s for s in range(n_shards) if not self._shard_ok(entry, str(s), shards.get(str(s)))]
        with progress(total=len(dataset), description=f"encoding {dataset.name} view {view}") as bar:
            bar.advance(len(dataset) - sum(self._shard_len(s, len(dataset)) for s in todo))
            for shard in todo:
                feats = self._encode_shard(backbone, dataset, view, shard, bar)
                data = _npy_bytes(feats.numpy().astype(np.float16))
                atomic_write_bytes(entry / f"shard-{shard:05d}.npy", data)
                shards[str(shard)] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                atomic_write_json(meta_path, self._meta(backbone, dataset, view, shards, complete=False))
        atomic_write_json(meta_path, self._meta(backbone, dataset, view, shards, complete=True))
        return self._load(entry, self._read_meta(meta_path))

    def view_features(self, backbone: Backbone, dataset: ImageDataset, views: int) -> torch.Tensor:
        """(N, 1 + views, D): the eval view then ``views`` augmented views, each cached."""
        stacked = [self.image_features(backbone, dataset, v) for v in range(views + 1)]
        return torch.stack(stacked, dim=1)

    def _shard_len(self, shard: int, total: int) -> int:
        return min(self.shard_size, total - shard * self.shard_size)

    def _encode_shard(self, backbone: Backbone, dataset: ImageDataset, view: int, shard: int, bar) -> torch.Tensor:
        start = shard * self.shard_size
        stop = min(len(dataset), start + self.shard_size)
        jpegs = gpu_paths_for(backbone, dataset, view, start, stop)
        if jpegs is not None:  # CUDA + eval view + JPEG files: decode and resize on the GPU
            out = []
            for batch in gpu_image_batches(jpegs, preprocess_params(backbone), self.batch_size, backbone.device):
                out.append(backbone.encode_images(batch).cpu())
                bar.advance(len(batch))
            return torch.cat(out)
        transform = backbone.preprocess if view == 0 else backbone.train_transform
        images = _ImageTensors(dataset, transform, start, stop, seed=view if view else None)
        workers = self.num_workers if stop - start > self.batch_size else 0
        loader = DataLoader(images, batch_size=self.batch_size, num_workers=workers,
                            pin_memory=backbone.device.type == "cuda", persistent_workers=False)
        out = []
        for batch in loader:  # (B, 3, H, W)
            out.append(backbone.encode_images(batch).cpu())
            bar.advance(len(batch))
        return torch.cat(out)

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
                "shard_size": self.shard_size, "shards": shards, "complete": complete}

    @staticmethod
    def _read_meta(path: Path) -> dict | None:
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def _shards_valid(self, entry: Path, meta: dict, backbone: Backbone) -> bool:
        if meta.get("fingerprint") != backbone.fingerprint or meta.get("dim") != backbone.embed_dim:
            return False
        n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
        return all(self._shard_ok(entry, str(s), meta["shards"].get(str(s))) for s in range(n_shards))

    @staticmethod
    def _shard_ok(entry: Path, shard: str, record: dict | None, verify_hash: bool = False) -> bool:
        if record is None:
            return False
        path = entry / f"shard-{int(shard):05d}.npy"
        try:
            if path.stat().st_size != record["bytes"]:
                log.warning("feature shard %s has the wrong size; it will be re-encoded", path)
                return False
        except OSError:
            return False
        if verify_hash:
            return hashlib.sha256(path.read_bytes()).hexdigest() == record["sha256"]
        return True

    def _load(self, entry: Path, meta: dict) -> torch.Tensor:
        n_shards = (meta["count"] + meta["shard_size"] - 1) // meta["shard_size"]
        parts = [np.load(entry / f"shard-{s:05d}.npy", mmap_mode="r") for s in range(n_shards)]  # (n, D) each
        features = np.concatenate(parts).astype(np.float32)
        if features.shape != (meta["count"], meta["dim"]):
            raise ValueError(f"entry {entry} holds {features.shape}, expected {(meta['count'], meta['dim'])}")
        return torch.from_numpy(features)

    def verify(self) -> list[Path]:
        """Check every shard's checksum; delete and return those that fail (rebuilt on next use)."""
        bad: list[Path] = []
        for meta_path in (self.root / "features").glob("*/*/meta.json"):
            meta = self._read_meta(meta_path)
            if meta is None:
                shutil.rmtree(meta_path.parent, ignore_errors=True)
                bad.append(meta_path.parent)
                continue
            for shard, record in meta["shards"].items():
                if not self._shard_ok(meta_path.parent, shard, record, verify_hash=True):
                    path = meta_path.parent / f"shard-{int(shard):05d}.npy"
                    path.unlink(missing_ok=True)
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
