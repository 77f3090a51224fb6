"""The 11 few-shot benchmarks of CoOp and CLIP: class names, prompt templates, on-disk layout.

The facts live in ``benchmark_meta/<name>.json`` (one file per dataset, each naming its
sources); this module only reads them. Nothing is downloaded: :func:`load_benchmark`
reads a local root laid out as CoOp's DATASETS.md describes, e.g.
``<root>/oxford_pets/split_zhou_OxfordPets.json`` with images in ``<root>/oxford_pets/images``.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

from vlkit.data.dataset import ImageDataset, MissingSplitError
from vlkit.data.loaders import load_image_folder, load_split_file, read_split_file
from vlkit.errors import DataError, VlkitError

log = logging.getLogger("vlkit.data")

COOP_DATASETS_GUIDE = "https://github.com/KaiyangZhou/CoOp/blob/main/DATASETS.md"
SPLITS = ("train", "val", "test")
TEMPLATE_KINDS = ("clip", "coop")
# The order the few-shot papers use in their tables.
_ORDER = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "Flowers102", "Food101",
          "FGVCAircraft", "SUN397", "DTD", "EuroSAT", "UCF101")


@dataclass(frozen=True)
class BenchmarkInfo:
    """One benchmark: its folder under the data root, its classes and its prompts.

    ``classnames`` are in CoOp's label order, spelled as CoOp feeds them to the text
    encoder (underscores as spaces); ``None`` means "read them from the split file".
    ``coop_template`` is CoOp's single hand-written prompt; ``clip_templates`` is the
    CLIP paper's ensemble for this dataset. ``layout`` says how the files are read:
    ``"split_json"`` (``split_file`` with paths relative to ``image_dir``),
    ``"imagenet_folders"`` (``images/train|val/<wnid>/`` plus ``classnames.txt``) or
    ``"fgvc_lists"`` (``variants.txt`` plus ``images_variant_<split>.txt``).
    """

    name: str
    folder: str
    split_file: str | None
    image_dir: str
    classnames: tuple[str, ...] | None
    coop_template: str
    clip_templates: tuple[str, ...]
    layout: str = "split_json"
    aliases: tuple[str, ...] = ()
    source: dict[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def num_classes(self) -> int | None:
        """How many classes the benchmark has (``None`` if names come from the split file)."""
        return None if self.classnames is None else len(self.classnames)

    def templates(self, kind: str = "clip") -> list[str]:
        """The prompt templates: ``"clip"`` for the CLIP ensemble, ``"coop"`` for CoOp's one."""
        if kind == "clip":
            return list(self.clip_templates)
        if kind == "coop":
            return [self.coop_template]
        raise VlkitError(f"unknown template kind {kind!r}; use one of {', '.join(TEMPLATE_KINDS)}")

    def expected_files(self, root: str | Path) -> str:
        """The files CoOp's layout puts under ``root`` for this benchmark, as one phrase."""
        base = Path(root) / self.folder
        if self.layout == "imagenet_folders":
            return f"{base / self.image_dir}/train|val/<wnid>/ and {base}/classnames.txt"
        if self.layout == "fgvc_lists":
            return f"{base}/variants.txt, {base}/images_variant_<split>.txt and {base / self.image_dir}/"
        images = base / self.image_dir if self.image_dir else base
        return f"{base / str(self.split_file)} with images under {images}/"


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _read_registry() -> dict[str, BenchmarkInfo]:
    infos: dict[str, BenchmarkInfo] = {}
    for entry in resources.files("vlkit.data.benchmark_meta").iterdir():
        if not entry.name.endswith(".json"):
            continue
        doc = json.loads(entry.read_text(encoding="utf-8"))
        names = doc.get("classnames")
        info = BenchmarkInfo(
            name=doc["name"],
            folder=doc["folder"],
            split_file=doc.get("split_file"),
            image_dir=doc.get("image_dir", ""),
            classnames=None if names is None else tuple(names),
            coop_template=doc["coop_template"],
            clip_templates=tuple(doc["clip_templates"]),
            layout=doc.get("layout", "split_json"),
            aliases=tuple(doc.get("aliases", ())),
            source=dict(doc.get("source", {})),
        )
        infos[info.name] = info
    rank = {name: i for i, name in enumerate(_ORDER)}
    return dict(sorted(infos.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


BENCHMARKS: dict[str, BenchmarkInfo] = _read_registry()
_LOOKUP: dict[str, str] = {
    _key(alias): info.name for info in BENCHMARKS.values() for alias in (info.name, info.folder, *info.aliases)
}


def benchmark_names() -> list[str]:
    """The registered benchmark names, in the papers' table order."""
    return list(BENCHMARKS)


def benchmark_info(name: str) -> BenchmarkInfo:
    """Look a benchmark up by name, CoOp folder or alias, ignoring case, '-', '_' and spaces."""
    found = _LOOKUP.get(_key(name))
    if found is None:
        raise DataError(f"unknown benchmark {name!r}; known: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[found]


def _missing(what: str, path: Path, info: BenchmarkInfo, root: Path) -> DataError:
    return DataError(
        f"{info.name}: {what} not found: {path} (expected {info.expected_files(root)}; "
        f"see CoOp's DATASETS.md: {COOP_DATASETS_GUIDE})"
    )


def _load_split_json(info: BenchmarkInfo, root: Path, split: str) -> ImageDataset:
    base = root / info.folder
    split_path = base / str(info.split_file)
    if not split_path.is_file():
        raise _missing("split file", split_path, info, root)
    image_root = base / info.image_dir if info.image_dir else base
    if not image_root.is_dir():
        raise _missing("image folder", image_root, info, root)
    return load_split_file(split_path, image_root, split, name=info.name)


def _read_imagenet_names(path: Path) -> dict[str, str]:
    names: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        folder, _, classname = line.strip().partition(" ")
        if folder:
            names[folder] = classname.strip()
    return names


def _load_imagenet(info: BenchmarkInfo, root: Path, split: str) -> ImageDataset:
    if split == "val":
        raise MissingSplitError(
            f"{info.name} has no validation split in CoOp's layout (images/val is the test set); "
            "take validation images from the train split, e.g. with few_shot()"
        )
    base = root / info.folder
    split_dir = base / info.image_dir / ("train" if split == "train" else "val")
    if not split_dir.is_dir():
        raise _missing("image folder", split_dir, info, root)
    folders = sorted(p.name for p in split_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    names_file = base / "classnames.txt"
    if names_file.is_file():
        names = _read_imagenet_names(names_file)
        unknown = [f for f in folders if f not in names]
        if unknown:
            raise DataError(f"{info.name}: class folder {unknown[0]!r} of {split_dir} is not in {names_file}")
        classnames = [names[f] for f in folders]
    elif info.classnames is not None and len(folders) == len(info.classnames):
        log.info("%s not found; using the registry's class names in sorted-folder order", names_file)
        classnames = list(info.classnames)
    else:
        raise _missing("class-name file", names_file, info, root)
    dataset = load_image_folder(split_dir, name=f"{info.name}/{split}")
    if len(dataset.classnames) != len(classnames):
        raise DataError(f"{info.name}: {split_dir} has {len(dataset.classnames)} class folders with images, "
                        f"expected {len(classnames)}")
    dataset.classnames = classnames
    return dataset


def _load_fgvc(info: BenchmarkInfo, root: Path, split: str) -> ImageDataset:
    base = root / info.folder
    variants_file = base / "variants.txt"
    list_file = base / f"images_variant_{split}.txt"
    image_root = base / info.image_dir
    for what, path in (("class list", variants_file), ("split list", list_file)):
        if not path.is_file():
            raise _missing(what, path, info, root)
    if not image_root.is_dir():
        raise _missing("image folder", image_root, info, root)
    classnames = [line.strip() for line in variants_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    index = {name: label for label, name in enumerate(classnames)}
    items: list[tuple[str, int]] = []
    for number, line in enumerate(list_file.read_text(encoding="utf-8").splitlines(), start=1):
        parts = line.strip().split(" ")
        if not parts[0]:
            continue
        variant = " ".join(parts[1:])
        if variant not in index:
            raise DataError(f"{list_file}:{number}: variant {variant!r} is not in {variants_file}")
        items.append((str(image_root / f"{parts[0]}.jpg"), index[variant]))
    digest = hashlib.sha256(variants_file.read_bytes() + b"\0" + list_file.read_bytes()).hexdigest()[:16]
    return ImageDataset(
        items=items, classnames=classnames, name=f"{info.name}/{split}",
        identity=f"{info.name}:{digest}:{image_root.resolve()}:{split}",
    )


_LOADERS = {"split_json": _load_split_json, "imagenet_folders": _load_imagenet, "fgvc_lists": _load_fgvc}


def load_benchmark(name: str, root: str | Path, split: str = "test", templates: str = "clip") -> ImageDataset:
    """Load one split of a benchmark from a CoOp-style data root (no downloads).

    Class names come from the files on disk (CoOp's split JSON, ImageNet's
    ``classnames.txt``, FGVCAircraft's ``variants.txt``) with underscores shown as
    spaces, as CoOp prompts them. ``templates`` picks the dataset's prompts:
    ``"clip"`` (CLIP's ensemble) or ``"coop"`` (CoOp's single template); both are
    also kept in ``meta``. A missing root or file raises a one-line DataError that
    names the path and the expected layout.
    """
    info = benchmark_info(name)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {info.name}; use one of {', '.join(SPLITS)}")
    info.templates(templates)  # an unknown kind fails before any file is read
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(
            f"benchmark root not found: {root} (expected {info.expected_files(root)}; "
            f"see CoOp's DATASETS.md: {COOP_DATASETS_GUIDE})"
        )
    if not (root / info.folder).is_dir():
        raise _missing("dataset folder", root / info.folder, info, root)
    return _with_prompts(_LOADERS[info.layout](info, root, split), info, split, templates, root / info.folder)


def _with_prompts(dataset: ImageDataset, info: BenchmarkInfo, split: str, templates: str, folder: Path
                  ) -> ImageDataset:
    """``dataset`` with CoOp's class-name spelling and the benchmark's prompts and facts."""
    dataset.classnames = [c.replace("_", " ") for c in dataset.classnames]
    if info.classnames is not None and len(info.classnames) != len(dataset.classnames):
        log.warning("%s at %s has %d classes; the registry lists %d", info.name, folder,
                    len(dataset.classnames), len(info.classnames))
    dataset.templates = info.templates(templates)
    dataset.meta.update(
        benchmark=info.name, split=split, template_kind=templates,
        coop_template=info.coop_template, clip_templates=list(info.clip_templates),
    )
    return dataset


def split_files(folder: str | Path) -> list[Path]:
    """The CoOp-style split files (``split*.json``) directly in ``folder``, sorted."""
    return sorted(p for p in Path(folder).glob("split*.json") if p.is_file())


def _image_root(split_file: Path, folder: Path, candidates: list[Path]) -> Path:
    """The first of ``candidates`` under which the split file's first image exists."""
    content = read_split_file(split_file)
    first = next((rows[0][0] for rows in content.values() if rows), None)
    if first is None:
        raise DataError(f"{split_file} lists no images")
    for root in candidates:
        if (root / first).is_file():
            return root
    tried = " or ".join(str(root / first) for root in candidates)
    raise DataError(f"{split_file} names {first!r}, which is not at {tried}: its paths are relative to the "
                    f"image folder (CoOp: {folder}/images/<relpath>)")


def load_split_folder(folder: str | Path, split: str = "test", templates: str = "clip") -> ImageDataset:
    """One split of a folder holding a CoOp-style split file (any ``split*.json``) and its images.

    One of the 11 benchmarks' split files in the benchmark's own folder is read as
    :func:`load_benchmark` reads it (its prompts included). Any other split file (a
    user's ``split.json``, ``split_zhou_<name>.json``) is read by the same reader,
    :func:`~vlkit.data.loaders.load_split_file`, with paths relative to ``images/``
    (or to the folder itself, whichever holds the first listed image); class names show
    underscores as spaces, as CoOp prompts them. Several split files, none a benchmark's,
    is a DataError naming them.
    """
    folder = Path(folder).expanduser()
    files = split_files(folder)
    by_file = {b.split_file: b for b in BENCHMARKS.values() if b.split_file}
    known = [f for f in files if f.name in by_file]
    chosen = known[0] if len(known) == 1 else files[0] if len(files) == 1 else None
    if chosen is None:
        found = ", ".join(f.name for f in files) or "none"
        raise DataError(f"{folder} must hold exactly one CoOp split file (split*.json), found: {found}; "
                        "keep one of them")
    info = by_file.get(chosen.name)
    if info is not None and folder.name == info.folder:
        return load_benchmark(info.name, folder.parent, split, templates)
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} for {chosen}; use one of {', '.join(SPLITS)}")
    candidates = [folder / d for d in dict.fromkeys([info.image_dir if info else "images", "images", ""])]
    dataset = load_split_file(chosen, _image_root(chosen, folder, candidates), split, name=folder.name)
    if info is not None:
        return _with_prompts(dataset, info, split, templates, folder)
    dataset.classnames = [c.replace("_", " ") for c in dataset.classnames]
    dataset.meta.update(split=split, split_file=str(chosen))
    return dataset
