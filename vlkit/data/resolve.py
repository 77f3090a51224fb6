"""Turn a ``--data`` spec into a dataset: an offline name, an ImageFolder, or a CoOp root."""
from __future__ import annotations

from pathlib import Path

from vlkit.data.dataset import ImageDataset
from vlkit.data.loaders import load_image_folder
from vlkit.errors import DataError

SPLITS = ("train", "val", "test", "all")


def _offline_names() -> list[str]:
    from vlkit.data.offline import OFFLINE_DATASETS, VENDORED_DATASETS

    return [*OFFLINE_DATASETS, *VENDORED_DATASETS]


def has_splits(spec: str) -> bool:
    """Whether ``spec`` names data with its own train/test split (else one plain folder)."""
    if spec in _offline_names():
        return True
    root = Path(spec).expanduser()
    return (root / "train").is_dir() or any(root.glob("split_zhou_*.json"))


def _plain_folder_split(dataset: ImageDataset, split: str) -> ImageDataset:
    """Every 4th image of each class (in sorted order) is test; the rest is the train pool."""
    if split == "all":
        return dataset
    seen = [0] * len(dataset.classnames)
    keep: list[int] = []
    for i, label in enumerate(dataset.labels):
        is_test = seen[label] % 4 == 3
        seen[label] += 1
        if is_test == (split == "test"):
            keep.append(i)
    return dataset.subset(keep, split)


def load_data(spec: str, split: str = "test", skip_corrupt: bool = False, **options) -> ImageDataset:
    """Load ``split`` of ``spec``.

    ``spec`` is an offline dataset name (``fashion-mnist``, ``emoji-google`` ...), a
    benchmark on a CoOp data root (``oxford_pets@/data/coop``), a CoOp-style dataset
    folder (holding ``split_zhou_*.json``), an ImageFolder root with
    ``train/``, ``val/``, ``test/`` sub-trees, or a plain ImageFolder root (then every
    4th image per class is the test split and the rest the training pool; ``all`` is
    every image).
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if spec in _offline_names():
        from vlkit.data.offline import load_offline

        if split == "all":
            raise DataError(f"{spec} has fixed splits: use --split train, val or test")
        return load_offline(spec, split, **options)
    if "@" in spec and not Path(spec).exists():
        from vlkit.data.coop_suite import load_benchmark

        name, data_root = spec.split("@", 1)
        return load_benchmark(name, data_root, split)
    root = Path(spec).expanduser()
    if not root.exists():
        raise DataError(
            f"no dataset {spec!r}: not a folder and not an offline dataset ({', '.join(_offline_names())})"
        )
    split_files = sorted(root.glob("split_zhou_*.json"))
    if split_files:
        from vlkit.data.coop_suite import BENCHMARKS, load_benchmark

        match = [b.name for b in BENCHMARKS.values() if b.split_file == split_files[0].name]
        if not match:
            raise DataError(f"{split_files[0]} is not one of the 11 benchmarks' split files; "
                            f"pass the images as an ImageFolder instead")
        return load_benchmark(match[0], root.parent, split)
    if (root / "train").is_dir():
        sub = root / split
        if split == "all" or not sub.is_dir():
            raise DataError(f"{root} has no {split}/ folder (it has {sorted(p.name for p in root.iterdir())})")
        return load_image_folder(sub, skip_corrupt=skip_corrupt, name=f"{root.name}/{split}")
    return _plain_folder_split(load_image_folder(root, skip_corrupt=skip_corrupt), split)
