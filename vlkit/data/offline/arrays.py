"""On-disk layout of a built offline dataset, atomic builds, and loading as an ImageDataset.

A dataset folder holds ``images.npy`` (uint8, ``(N, H, W)`` gray or ``(N, H, W, 3)`` RGB),
``split.npy`` (int8: 0 train, 1 val, 2 test), ``labels-<level>.npy`` (int16, -1 = not in
that label level) and ``info.json`` (classnames per level, licence, source, templates,
content digest). It is built in a hidden temp folder and renamed into place, so a folder
with the final name is always complete.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from vlkit.data.dataset import ImageDataset
from vlkit.errors import DataError
from vlkit.io import publish_dir, temp_dir_beside

log = logging.getLogger("vlkit.data")

SPLITS = {"train": 0, "val": 1, "test": 2}
INFO = "info.json"
_ARRAYS: dict[str, np.ndarray] = {}  # per-process cache of memory-mapped image arrays


def is_built(folder: Path) -> bool:
    """True when ``folder`` is a complete built dataset."""
    return (folder / INFO).is_file()


def build_atomic(folder: Path, write: Callable[[Path], dict], force: bool = False) -> Path:
    """Run ``write(tmp_dir) -> info`` in a temp folder next to ``folder`` and publish it in one rename.

    Temp folders left by killed builds are deleted first (:func:`vlkit.io.temp_dir_beside`).
    """
    if is_built(folder) and not force:
        return folder
    tmp = temp_dir_beside(folder)
    try:
        start = time.perf_counter()
        info = write(tmp)
        info["build_seconds"] = round(time.perf_counter() - start, 2)
        (tmp / INFO).write_text(json.dumps(info, indent=1))  # written last: marks the folder complete
        if is_built(folder) and not force:  # another process finished first: keep its folder
            shutil.rmtree(tmp)
            return folder
        publish_dir(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("built %s in %.1f s", folder, info["build_seconds"])
    return folder


def digest_array(array: np.ndarray) -> str:
    """A short content digest of an array (shape, dtype and bytes)."""
    digest = hashlib.sha256(f"{array.shape}|{array.dtype}".encode())
    digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


def write_arrays(folder: Path, images: np.ndarray, split: np.ndarray,
                 labels: dict[str, tuple[np.ndarray, list[str]]], info: dict) -> dict:
    """Save the arrays into ``folder``; return ``info`` completed with classnames, counts and digest."""
    if images.dtype != np.uint8 or len(images) != len(split):
        raise ValueError(f"images must be uint8 with one split per image, got {images.dtype} {images.shape}")
    np.save(folder / "images.npy", images)
    np.save(folder / "split.npy", split.astype(np.int8))
    info = dict(info, image_shape=list(images.shape[1:]), digest=digest_array(images),
                classnames={}, counts={})
    for level, (lab, names) in labels.items():
        np.save(folder / f"labels-{level}.npy", lab.astype(np.int16))
        info["classnames"][level] = list(names)
        info["counts"][level] = {s: int(((split == code) & (lab >= 0)).sum()) for s, code in SPLITS.items()}
    return info


class ArrayImage:
    """A picklable zero-argument callable: row ``index`` of a ``.npy`` image array as a PIL image."""

    def __init__(self, path: str, index: int, digest: str = "") -> None:
        self.path, self.index, self.digest = path, index, digest

    def __call__(self) -> Image.Image:
        key = f"{self.path}|{self.digest}"  # a rebuilt dataset gets a fresh map
        array = _ARRAYS.get(key)
        if array is None:
            array = _ARRAYS[key] = np.load(self.path, mmap_mode="r")
        return Image.fromarray(np.asarray(array[self.index]))

    def __repr__(self) -> str:
        return f"{self.path}[{self.index}]"


def read_info(folder: Path) -> dict:
    """The ``info.json`` of a built dataset."""
    try:
        return json.loads((folder / INFO).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {folder / INFO}: {exc} (rebuild with force=True)") from None


def load_built(folder: Path, split: str, label_level: str) -> ImageDataset:
    """One split of a built dataset folder as an ImageDataset of lazy array-row images."""
    info = read_info(folder)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    if label_level not in info["classnames"]:
        raise DataError(f"{info['name']} has no label level {label_level!r}; "
                        f"choose one of {', '.join(info['classnames'])}")
    images = str(folder / "images.npy")
    try:
        labels = np.load(folder / f"labels-{label_level}.npy")
        splits = np.load(folder / "split.npy")
        n_images = len(np.load(images, mmap_mode="r"))
    except (OSError, ValueError) as exc:
        raise DataError(f"{folder} is damaged ({exc.__class__.__name__}); rebuild it with force=True") from None
    if not len(labels) == len(splits) == n_images:
        raise DataError(f"{folder} is damaged (array lengths differ); rebuild it with force=True")
    rows = np.flatnonzero((splits == SPLITS[split]) & (labels >= 0))
    return ImageDataset(
        items=[(ArrayImage(images, int(i), info["digest"]), int(labels[i])) for i in rows],
        classnames=list(info["classnames"][label_level]),
        name=f"{info['name']}/{split}",
        identity=f"{info['name']}:v{info['version']}:{info['digest']}:{split}:{label_level}",
        domain=info["domain"],
        templates=list(info["templates"]),
        meta={"licence": info["licence"], "source": info["source"], "split": split,
              "label_level": label_level, "folder": str(folder)},
    )


def stable_order(keys: list[str], salt: str) -> list[int]:
    """Indices of ``keys`` sorted by a salted SHA-256: a fixed shuffle that needs no RNG."""
    return sorted(range(len(keys)), key=lambda i: hashlib.sha256(f"{salt}|{keys[i]}".encode()).digest())


def stratified_split(keys: list[str], groups: list, val: float, test: float, salt: str) -> np.ndarray:
    """Per group, a fixed shuffle by key; the first ``test`` fraction is test, the next ``val`` val."""
    split = np.zeros(len(keys), dtype=np.int8)
    by_group: dict = {}
    for i, g in enumerate(groups):
        by_group.setdefault(g, []).append(i)
    for members in by_group.values():
        order = [members[j] for j in stable_order([keys[i] for i in members], salt)]
        n = len(order)
        n_test = max(1, round(n * test)) if n >= 3 else 0
        n_val = max(1, round(n * val)) if n >= 3 else 0
        split[order[:n_test]] = 2
        split[order[n_test:n_test + n_val]] = 1
    return split
