"""The dataset object every loader returns, and image decoding with clear errors."""
from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Sequence, Union

from PIL import Image, UnidentifiedImageError

from vlkit.errors import DataError

log = logging.getLogger("vlkit.data")

ImageSource = Union[str, Path, Image.Image, Callable[[], Image.Image]]


class MissingSplitError(DataError):
    """The data has no such split (no ``val/`` folder, no ``val`` in its split file, ...).

    Callers that can do without the split (validation falls back to the train pool) catch
    this one; every other DataError means the data is broken.
    """


def open_image(source: ImageSource) -> Image.Image:
    """Decode one image to RGB; a corrupt or missing file raises a DataError naming it."""
    if isinstance(source, Image.Image):
        return source.convert("RGB")
    if callable(source):
        return source().convert("RGB")
    return decode_image(Path(source), str(Path(source)))


def decode_image(file: Path | BinaryIO, what: str) -> Image.Image:
    """Decode ``file`` (a path or an open binary file) to RGB; errors are one-line DataErrors naming ``what``."""
    try:
        with Image.open(file) as img:  # reads the header only; over twice the limit PIL raises here
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.size[0] * img.size[1] > limit:  # over the limit: refused before decoding
                raise Image.DecompressionBombError(img.size)
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError:
        raise DataError(
            f"image {what} is too large to decode safely: more than PIL's limit of {Image.MAX_IMAGE_PIXELS:,} "
            "pixels (a decompression bomb?); remove or shrink it, or pass --skip-corrupt / skip_corrupt=True"
        ) from None
    except FileNotFoundError:
        raise DataError(f"image not found: {what} (check the dataset root)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        detail = str(exc).replace(f" {file!r}", "")  # PIL names an open file by its repr: drop it
        raise DataError(
            f"cannot decode image {what}: {exc.__class__.__name__}: {detail} "
            "(remove or replace it, or pass --skip-corrupt / skip_corrupt=True)"
        ) from None


@dataclass
class ImageDataset:
    """A labelled image list: ``items[i] = (image source, label)`` with ``classnames``.

    ``identity`` is a stable string used by the feature store's key: two datasets with
    the same identity must hold the same images in the same order. Loaders derive it
    from the source (root path + file list, or the build recipe of an offline set).
    ``domain`` names the image style ("photo", "sketch", "emoji-google") for prompts
    that mention it.
    """

    items: list[tuple[ImageSource, int]]
    classnames: list[str]
    name: str = "dataset"
    identity: str = ""
    domain: str = "photo"
    templates: list[str] = field(default_factory=list)
    meta: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.identity:
            digest = hashlib.sha256()
            for src, label in self.items:
                digest.update(f"{src if isinstance(src, (str, Path)) else id(src)}|{label}\n".encode())
            self.identity = f"{self.name}:{digest.hexdigest()[:16]}"
        n_classes = len(self.classnames)
        bad = [lab for _, lab in self.items if not 0 <= lab < n_classes]
        if bad:
            raise DataError(
                f"dataset {self.name!r} has label {bad[0]} outside 0..{n_classes - 1} "
                f"({n_classes} class names given)"
            )

    def __len__(self) -> int:
        return len(self.items)

    @property
    def labels(self) -> list[int]:
        """The label of every item, in order."""
        return [label for _, label in self.items]

    def image(self, index: int) -> Image.Image:
        """Decode item ``index`` as an RGB PIL image."""
        return open_image(self.items[index][0])

    def subset(self, indices: Sequence[int], name_suffix: str) -> "ImageDataset":
        """A new dataset with the chosen items; identity records the selection."""
        indices = list(indices)
        digest = hashlib.sha256(",".join(map(str, indices)).encode()).hexdigest()[:12]
        return ImageDataset(
            items=[self.items[i] for i in indices],
            classnames=list(self.classnames),
            name=f"{self.name}/{name_suffix}",
            identity=f"{self.identity}/{name_suffix}:{digest}",
            domain=self.domain,
            templates=list(self.templates),
            meta=dict(self.meta),
        )

    def class_counts(self) -> list[int]:
        """How many items each class has."""
        counts = [0] * len(self.classnames)
        for label in self.labels:
            counts[label] += 1
        return counts


def drop_unreadable(dataset: ImageDataset) -> ImageDataset:
    """Return ``dataset`` without the items that fail to decode; log how many were skipped."""
    keep: list[int] = []
    skipped: list[str] = []
    for i, (src, _) in enumerate(dataset.items):
        try:
            open_image(src)
            keep.append(i)
        except DataError:
            skipped.append(str(src))
    if not skipped:
        return dataset
    log.warning("skipped %d unreadable image(s) in %s, first: %s", len(skipped), dataset.name, skipped[0])
    kept = dataset.subset(keep, "readable")
    kept.meta["skipped"] = skipped
    return kept
