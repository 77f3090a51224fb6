"""Regenerate ``fashion_mnist_mini.npz``: a fixed slice of the official Fashion-MNIST files.

Per class: the first 100 (train) and next 20 (val) images of the official training file,
and the first 50 of the official test file, in file order. (50 test images per class keep
``vlkit fewshot``, which scores every method on them, within its 3-minute budget: CoCoOp runs
the text tower once per test image and class.) Deterministic; run
``python -m vlkit.data.offline.make_mini_slice [IDX_DIR]`` (default: the Debian package's).
The archive is a zip of .npy members compressed with LZMA (NumPy reads it like any .npz).
"""
from __future__ import annotations

import io
import logging
import sys
import zipfile
from pathlib import Path

import numpy as np

from vlkit.data.offline.fashion import DEBIAN_DIR, MINI_FILE, load_split_arrays
from vlkit.data.offline.arrays import digest_array

log = logging.getLogger("vlkit.data")

PER_CLASS = {"train": ("train", 0, 100), "val": ("train", 100, 120), "test": ("test", 0, 50)}


def make_slice(idx_dir: Path) -> dict[str, np.ndarray]:
    """The slice's arrays: ``<split>_images`` (N, 28, 28) uint8, ``<split>_labels`` (N,) uint8."""
    official = {s: load_split_arrays(idx_dir, s) for s in ("train", "test")}
    out: dict[str, np.ndarray] = {}
    for split, (source, start, stop) in PER_CLASS.items():
        images, labels = official[source]
        rows = np.concatenate([np.flatnonzero(labels == c)[start:stop] for c in range(10)])
        out[f"{split}_images"], out[f"{split}_labels"] = images[rows], labels[rows]
    out["digest"] = np.array(digest_array(np.concatenate([out[f"{s}_images"] for s in PER_CLASS])))
    return out


def write_npz(arrays: dict[str, np.ndarray], path: Path) -> None:
    """Write ``arrays`` as an LZMA-compressed .npz (byte-identical for identical arrays)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as zf:
        for key in sorted(arrays):
            buf = io.BytesIO()
            np.save(buf, arrays[key], allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_LZMA
            zf.writestr(info, buf.getvalue())


def main(argv: list[str]) -> None:
    """Write the slice from the IDX files in ``argv[0]`` (default: the Debian package's folder)."""
    idx_dir = Path(argv[0]) if argv else DEBIAN_DIR
    write_npz(make_slice(idx_dir), MINI_FILE)
    log.info("wrote %s (%d bytes)", MINI_FILE, MINI_FILE.stat().st_size)


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO)
    main(sys.argv[1:])
