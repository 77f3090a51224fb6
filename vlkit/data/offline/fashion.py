"""Fashion-MNIST from the Debian package ``dataset-fashion-mnist`` (or torchvision's downloader),
and the small slice vendored in this package for the no-argument demo."""
from __future__ import annotations

import gzip
import logging
import shutil
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from vlkit.data.dataset import ImageDataset
from vlkit.io import cache_root
from vlkit.data.offline.arrays import SPLITS, stable_order, write_arrays
from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

VERSION = "1"
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
         "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
CLASSNAMES = ["t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
              "ankle boot"]
TEMPLATES = ["a photo of a {}.", "a black and white photo of a {}.", "a low resolution photo of a {}.",
             "a product photo of a {}.", "a photo of the {}, a type of fashion product."]
VAL_PER_CLASS = 500
LICENCE = "MIT (Copyright (c) 2017 Zalando SE, https://github.com/zalandoresearch/fashion-mnist)"
MINI_FILE = Path(__file__).with_name("fashion_mnist_mini.npz")


def read_idx(path: Path) -> np.ndarray:
    """Read a gzipped IDX file (the MNIST format) as a uint8 array."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    if data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DataError(f"{path} is not a uint8 IDX file (reinstall it)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    array = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if array.size != int(np.prod(shape)):
        raise DataError(f"{path} is truncated: {array.size} values for shape {shape} (reinstall it)")
    return array.reshape(shape)


def _torchvision_dir() -> Path:
    """Download Fashion-MNIST with torchvision into the cache; return the folder of the .gz files."""
    from torchvision.datasets import FashionMNIST

    root = cache_root() / "downloads"
    FashionMNIST(str(root), train=True, download=True)
    FashionMNIST(str(root), train=False, download=True)
    return root / "FashionMNIST" / "raw"


def source_dir() -> Path:
    """The folder with the four IDX .gz files: the Debian package's, else a torchvision download."""
    if all((DEBIAN_DIR / f).is_file() for pair in FILES.values() for f in pair):
        return DEBIAN_DIR
    try:
        folder = _torchvision_dir()
    except Exception as exc:  # no network, no torchvision, mirror down: all end the same way
        raise DataError(
            f"Fashion-MNIST not found in {DEBIAN_DIR} and torchvision's download failed "
            f"({exc.__class__.__name__}); install the Debian package: "
            "`sudo apt-get install dataset-fashion-mnist`") from None
    log.info("using torchvision's Fashion-MNIST download in %s", folder)
    return folder


def load_split_arrays(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Images ``(N, 28, 28)`` and labels ``(N,)`` of the official ``train`` or ``test`` files."""
    images, labels = (read_idx(folder / f) for f in FILES[split])
    if len(images) != len(labels):
        raise DataError(f"{folder}: {len(images)} images but {len(labels)} labels (reinstall the files)")
    return images, labels


def build_fashion(folder: Path) -> dict:
    """Write fashion-mnist: official test; val = 500 per class carved from train by a fixed hash."""
    src = source_dir()
    train_x, train_y = load_split_arrays(src, "train")
    test_x, test_y = load_split_arrays(src, "test")
    split = np.concatenate([np.zeros(len(train_y), np.int8), np.full(len(test_y), 2, np.int8)])
    for c in range(len(CLASSNAMES)):
        members = np.flatnonzero(train_y == c)
        order = stable_order([str(i) for i in members], "fashion-mnist-val")
        split[members[order[:VAL_PER_CLASS]]] = 1
    shutil.copy(Path(__file__).with_name("LICENSE-fashion-mnist"), folder / "LICENSE")
    return write_arrays(folder, np.concatenate([train_x, test_x]), split, {
        "class": (np.concatenate([train_y, test_y]), CLASSNAMES),
    }, {
        "name": "fashion-mnist", "version": VERSION, "domain": "fashion product photo",
        "templates": TEMPLATES, "licence": LICENCE,
        "source": f"Debian package dataset-fashion-mnist ({src})" if src == DEBIAN_DIR
        else f"torchvision FashionMNIST download ({src})",
        "recipe": f"official 60k/10k files; val = {VAL_PER_CLASS} per class of train by SHA-256 of the index",
    })


@lru_cache(maxsize=1)
def _mini() -> dict[str, np.ndarray]:
    if not MINI_FILE.is_file():
        raise DataError(f"vendored slice {MINI_FILE} is missing (reinstall vlkit)")
    with np.load(MINI_FILE) as npz:
        return {k: npz[k] for k in npz.files}


class MiniImage:
    """A picklable zero-argument callable: one image of the vendored Fashion-MNIST slice."""

    def __init__(self, split: str, index: int) -> None:
        self.split, self.index = split, index

    def __call__(self) -> Image.Image:
        return Image.fromarray(_mini()[f"{self.split}_images"][self.index])

    def __repr__(self) -> str:
        return f"fashion-mnist-mini:{self.split}[{self.index}]"


def load_mini(split: str) -> ImageDataset:
    """The vendored slice: 100 train + 20 val + 50 test images per class, no build needed."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    data = _mini()
    labels = data[f"{split}_labels"]
    return ImageDataset(
        items=[(MiniImage(split, i), int(y)) for i, y in enumerate(labels)],
        classnames=list(CLASSNAMES), name=f"fashion-mnist-mini/{split}",
        identity=f"fashion-mnist-mini:v{VERSION}:{str(data['digest'])}:{split}:class",
        domain="fashion product photo", templates=list(TEMPLATES),
        meta={"licence": LICENCE, "source": "vendored slice of the official Fashion-MNIST files",
              "split": split, "label_level": "class"},
    )
