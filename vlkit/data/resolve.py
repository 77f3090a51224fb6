"""Turn a ``--data`` spec into a dataset: the one resolver every command goes through.

Accepted layouts (:data:`LAYOUTS`): an offline dataset name; ``NAME@COOP_ROOT`` (one of
the 11 benchmarks); a folder holding a CoOp-style ``split*.json`` beside ``images/``; a
folder with ``train/``, ``val/``, ``test/`` ImageFolder trees; a plain ImageFolder
(``<root>/<class>/<image>``, then every 4th image per class is test); WebDataset shards
(a brace pattern ``shards-{000000..000127}.tar``, one ``.tar``, or a folder of ``.tar``
shards, with ``train/``, ``val/``, ``test/`` folders of shards for fixed splits, else every
4th sample per class is test, as for a plain folder; see :mod:`vlkit.data.webdataset_source`). Anything that
would read one layout as another (a class called ``images`` or ``train``, a class folder
that is itself a dataset root, fewer than 2 classes) is a one-line DataError naming what
was found and these layouts, never a result.
"""
from __future__ import annotations

from pathlib import Path

from vlkit.data.dataset import ImageDataset, MissingSplitError
from vlkit.data.loaders import IMAGE_SUFFIXES, load_image_folder
from vlkit.errors import DataError

SPLITS = ("train", "val", "test", "all")
SPLIT_FOLDERS = ("train", "val", "test")
RESERVED_CLASS_NAMES = ("images", *SPLIT_FOLDERS)  # folder names that belong to another layout
LAYOUTS = ("an offline dataset name (`vlkit datasets` lists them)", "NAME@COOP_ROOT (a CoOp benchmark)",
           "ROOT/images/... with a CoOp split*.json in ROOT", "ROOT/train|val|test/<class>/<image>",
           "ROOT/<class>/<image> with 2 or more classes",
           "WebDataset shards with classnames.txt beside them: PATH/shards-{000000..000127}.tar, one .tar, or a "
           "folder of .tar shards (train/, val/, test/ folders of shards for fixed splits)")


def accepted_layouts() -> str:
    """The layouts ``--data`` accepts, as one phrase for error messages."""
    return "accepted layouts: " + "; ".join(LAYOUTS)


def _layout_error(found: str) -> DataError:
    return DataError(f"{found}; {accepted_layouts()}")


def _offline_names() -> list[str]:
    from vlkit.data.offline import OFFLINE_DATASETS, VENDORED_DATASETS

    return [*OFFLINE_DATASETS, *VENDORED_DATASETS]


def _split_files(root: Path) -> list[Path]:
    from vlkit.data.coop_suite import split_files

    return split_files(root)


def has_splits(spec: str) -> bool:
    """Whether ``spec`` names data with its own train/test split (else one plain folder)."""
    if spec in _offline_names() or ("@" in spec and not Path(spec).exists()):
        return True
    if _is_shards(spec):
        return _shard_layout(spec).splits is not None
    root = Path(spec).expanduser()
    return root.is_dir() and ((root / "train").is_dir() or bool(_split_files(root)))


def _plain_folder_split(dataset: ImageDataset, split: str, kind: str = "a plain ImageFolder") -> ImageDataset:
    """Every 4th image of each class (in dataset order) is test; the rest is the train pool."""
    if split == "all":
        return dataset
    if split == "val":
        raise MissingSplitError(f"{dataset.name} is {kind}: it has no val split")
    seen = [0] * len(dataset.classnames)
    keep: list[int] = []
    for i, label in enumerate(dataset.labels):
        is_test = seen[label] % 4 == 3
        seen[label] += 1
        if is_test == (split == "test"):
            keep.append(i)
    return dataset.subset(keep, split)


def _holds_images(folder: Path) -> bool:
    return any(p.suffix.lower() in IMAGE_SUFFIXES and p.is_file() for p in folder.rglob("*"))


def check_class_folders(root: Path) -> None:
    """Refuse an ImageFolder root whose class folders look like another layout.

    A class named ``images``/``train``/``val``/``test``, a class folder holding a split
    file, or one holding sub-folders of images (a dataset root one level down), or fewer
    than 2 class folders: a DataError that says what was found and the accepted layouts.
    """
    folders = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    names = [p.name for p in folders]
    if "images" in names and not _split_files(root):
        raise _layout_error(f"{root} holds images/ but no CoOp split file (split*.json) beside it")
    reserved = [n for n in names if n in RESERVED_CLASS_NAMES]
    if reserved:
        raise _layout_error(f"{root} has class folders named {', '.join(reserved)} (read as classes they would "
                            f"be wrong; a train/val/test layout needs train/)")
    for folder in folders:
        if _split_files(folder):
            raise _layout_error(f"class folder {folder} holds a split file ({_split_files(folder)[0].name}): it is "
                                f"a dataset of its own, pass --data {folder}")
        nested = [p.name for p in sorted(folder.iterdir()) if p.is_dir() and _holds_images(p)]
        if nested:
            raise _layout_error(f"class folder {folder} holds sub-folders of images ({', '.join(nested[:3])}): "
                                f"it looks like a dataset root, pass --data {folder} or move the images up")
    if len(folders) < 2:
        raise _layout_error(f"{root} has {len(folders)} class folder{'s' * (len(folders) != 1)}"
                            f"{' (' + names[0] + ')' if names else ''}: classification needs 2 or more")


def check_dataset(dataset: ImageDataset, spec: str) -> ImageDataset:
    """``dataset`` if it has at least 2 classes, else a DataError naming what was found."""
    if len(dataset.classnames) < 2:
        found = ", ".join(dataset.classnames) or "none"
        raise _layout_error(f"{spec} resolves to {len(dataset.classnames)} class{'es' * (not dataset.classnames)} "
                            f"({found}): classification needs 2 or more")
    return dataset


def _load_folder(root: Path, split: str, skip_corrupt: bool) -> ImageDataset:
    if _split_files(root):
        from vlkit.data.coop_suite import load_split_folder

        if split == "all":
            raise DataError(f"{root} has fixed splits (its split file): use --split train, val or test")
        dataset = load_split_folder(root, split)
        return drop_unreadable_if(dataset, skip_corrupt)
    if (root / "train").is_dir():
        others = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")
                        and p.name not in SPLIT_FOLDERS)
        if others:
            raise _layout_error(f"{root} has train/ beside folders other than val/ and test/ "
                                f"({', '.join(others[:3])}): rename or move them")
        if split == "all":
            raise DataError(f"{root} has fixed splits (train/, val/, test/): use --split train, val or test")
        sub = root / split
        if not sub.is_dir():
            present = [f"{name}/" for name in SPLIT_FOLDERS if (root / name).is_dir()]
            error = MissingSplitError if split == "val" else DataError
            raise error(f"{root} has no {split}/ folder (it has {', '.join(present)})")
        check_class_folders(sub)
        return load_image_folder(sub, skip_corrupt=skip_corrupt, name=f"{root.name}/{split}")
    check_class_folders(root)
    return _plain_folder_split(load_image_folder(root, skip_corrupt=skip_corrupt), split)


def _is_shards(spec: str) -> bool:
    from vlkit.data.webdataset_source import looks_like_shards

    return looks_like_shards(spec)


def _shard_layout(spec: str):
    from vlkit.data.webdataset_source import shard_layout

    return shard_layout(spec)


def _load_shards(spec: str, split: str, skip_corrupt: bool) -> ImageDataset:
    """WebDataset shards, split as folders are: train/, val/, test/ folders of shards, else every 4th per class."""
    from vlkit.data.webdataset_source import load_shard_set, read_classnames

    layout = _shard_layout(spec)
    if layout.splits is None:
        dataset = load_shard_set(layout.shards, read_classnames(layout.folders, spec), layout.name, skip_corrupt)
        return _plain_folder_split(dataset, split, kind="a plain set of shards (no val/ folder of shards)")
    if split == "all":
        raise DataError(f"{spec} has fixed splits (train/, val/, test/ folders of shards): "
                        "use --split train, val or test")
    if split not in layout.splits:
        error = MissingSplitError if split == "val" else DataError
        raise error(f"{spec} has no {split}/ folder of shards (it has {', '.join(s + '/' for s in layout.splits)})")
    folder = layout.folders[0] / split
    return load_shard_set(layout.splits[split], read_classnames([*layout.folders, folder], spec),
                          f"{layout.name}/{split}", skip_corrupt)


def drop_unreadable_if(dataset: ImageDataset, skip_corrupt: bool) -> ImageDataset:
    """``dataset`` without its unreadable images when ``skip_corrupt``, else as it is."""
    from vlkit.data.dataset import drop_unreadable

    return drop_unreadable(dataset) if skip_corrupt else dataset


def load_data(spec: str, split: str = "test", skip_corrupt: bool = False, **options) -> ImageDataset:
    """Load ``split`` (train, val, test or all) of ``spec``, one of :data:`LAYOUTS`.

    ``spec`` is an offline dataset name (``fashion-mnist``, ``emoji-google`` ...), a
    benchmark on a CoOp data root (``oxford_pets@/data/coop``), a folder holding a
    CoOp-style split file (``split*.json``, any name, images under ``images/``), an
    ImageFolder root with ``train/``, ``val/``, ``test/`` sub-trees, or a plain
    ImageFolder root (then every 4th image per class is the test split and the rest the
    training pool; ``all`` is every image), or WebDataset shards (a brace pattern, one
    ``.tar``, or a folder of shards; split like folders). A split the data lacks (no ``val/``, an
    empty ``val`` list) raises :class:`~vlkit.data.dataset.MissingSplitError`; a layout
    that cannot be read safely, or fewer than 2 classes, a DataError.
    """
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r}; use one of {', '.join(SPLITS)}")
    if spec in _offline_names():
        from vlkit.data.offline import load_offline

        if split == "all":
            raise DataError(f"{spec} has fixed splits: use --split train, val or test")
        dataset = load_offline(spec, split, **options)
    elif "@" in spec and not Path(spec).exists():
        from vlkit.data.coop_suite import load_benchmark

        name, data_root = spec.split("@", 1)
        dataset = drop_unreadable_if(load_benchmark(name, data_root, split), skip_corrupt)
    elif _is_shards(spec):
        dataset = _load_shards(spec, split, skip_corrupt)
    else:
        root = Path(spec).expanduser()
        if not root.exists():
            raise DataError(f"no dataset {spec!r}: not a folder and not an offline dataset "
                            f"({', '.join(_offline_names())})")
        if not root.is_dir():
            raise _layout_error(f"{spec} is a file, not a dataset folder")
        dataset = _load_folder(root, split, skip_corrupt)
    if split == "val" and len(dataset) == 0:
        raise MissingSplitError(f"{spec} has an empty val split")
    return check_dataset(dataset, spec)
