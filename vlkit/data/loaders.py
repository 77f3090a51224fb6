"""Loaders for an ImageFolder tree and CoOp-style split files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlkit.data.dataset import ImageDataset, MissingSplitError, drop_unreadable
from vlkit.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


def _tree_identity(name: str, root: Path, files: list[tuple[str, int]]) -> str:
    digest = hashlib.sha256(str(root.resolve()).encode())
    for rel, label in files:
        stat = (root / rel).stat()
        digest.update(f"{rel}|{label}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return f"{name}:{digest.hexdigest()[:16]}"


def load_image_folder(root: str | Path, skip_corrupt: bool = False, name: str | None = None) -> ImageDataset:
    """Load ``root/<class>/<image>`` into a dataset; class names are the sorted folder names.

    Underscores in folder names become spaces in class names. An empty class folder,
    a missing root or a corrupt image raises a DataError naming it (``skip_corrupt``
    drops unreadable images instead and logs how many).
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"dataset folder not found: {root} (pass an ImageFolder root: <root>/<class>/<image>)")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise DataError(f"no class folders in {root} (expected <root>/<class>/<image>)")
    files: list[tuple[str, int]] = []
    for label, cdir in enumerate(class_dirs):
        images = sorted(p for p in cdir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not images:
            raise DataError(f"class folder {cdir} has no images (add images or remove the folder)")
        files.extend((str(p.relative_to(root)), label) for p in images)
    classnames = [d.name.replace("_", " ") for d in class_dirs]
    name = name or root.name
    dataset = ImageDataset(
        items=[(str(root / rel), label) for rel, label in files],
        classnames=classnames,
        name=name,
        identity=_tree_identity(name, root, files),
    )
    if skip_corrupt:
        return drop_unreadable(dataset)
    return dataset


def read_split_file(split_file: str | Path) -> dict[str, list[list]]:
    """The rows of a CoOp-style split JSON, checked: ``{split: [[relpath, label, classname], ...]}``."""
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DataError(f"split file not found: {split_file} (see CoOp's DATASETS.md for the layout)")
    try:
        content = json.loads(split_file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"split file {split_file} is not valid JSON: {exc}") from None
    if not isinstance(content, dict) or not all(isinstance(rows, list) for rows in content.values()):
        raise DataError(f"{split_file} is not a CoOp split file: expected "
                        '{"train": [[relpath, label, classname], ...], "val": [...], "test": [...]}')
    for rows in content.values():
        for row in rows:
            if not isinstance(row, list) or len(row) != 3 or not isinstance(row[1], int) or isinstance(row[1], bool):
                raise DataError(f"{split_file}: expected [relpath, label, classname] rows, got {row!r}")
    return content


def load_split_file(
    split_file: str | Path, image_root: str | Path, split: str, name: str | None = None
) -> ImageDataset:
    """Read one split of a CoOp-style JSON: ``{"train": [[relpath, label, classname], ...], ...}``.

    Class names come from the file (label -> classname over all splits), so every split
    of one file shares the same label space. A split the file lacks raises
    :class:`~vlkit.data.dataset.MissingSplitError`.
    """
    split_file, image_root = Path(split_file), Path(image_root)
    content = read_split_file(split_file)
    if split not in content:
        raise MissingSplitError(f"split {split!r} not in {split_file}; it has {sorted(content)}")
    names: dict[int, str] = {}
    for rows in content.values():
        for _, label, classname in rows:
            if names.setdefault(label, str(classname)) != str(classname):
                raise DataError(f"{split_file}: label {label} is named both {names[label]!r} and {classname!r}")
    if sorted(names) != list(range(len(names))):
        raise DataError(f"{split_file}: labels are not 0..{len(names) - 1}")
    classnames = [names[i] for i in range(len(names))]
    items = [(str(image_root / rel), int(label)) for rel, label, _ in content[split]]
    name = name or split_file.stem
    digest = hashlib.sha256(split_file.read_bytes()).hexdigest()[:16]
    return ImageDataset(
        items=items, classnames=classnames, name=f"{name}/{split}",
        identity=f"{name}:{digest}:{image_root.resolve()}:{split}",
    )
