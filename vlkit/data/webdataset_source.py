"""WebDataset shards (what img2dataset and open_clip's training write) as a dataset.

``--data`` names shards three ways: a brace pattern (``path/shards-{000000..000127}.tar``,
webdataset's own expansion, ``::`` joins patterns), one ``.tar`` file, or a folder holding
``*.tar`` shards (sorted by name), with ``train/``, ``val/``, ``test/`` sub-folders of
shards when the data has fixed splits. A sample is the tar members that share a key
(webdataset's rule: the name up to the first dot of its last path part): one image
(``.jpg``, ``.jpeg``, ``.png`` or ``.webp``; the first of these when several) and a label,
``.cls`` (an integer as text) or ``.json`` (an object whose ``label`` or ``cls`` field is
an integer; ``.cls`` wins when both are present). Class names come from
``classnames.txt`` (one name per line, line i = label i; blank lines and ``#`` comments
are skipped) or ``classnames.json`` (a list, or ``{"0": name, ...}``) beside the shards
(or in the folder above a split folder).

Reading: one pass per shard builds its index: webdataset streams the shard (the label
members, and proves the tar reads to its end) and the tar's header table gives each image
member's byte offset and size (members of an uncompressed tar are stored contiguously).
The index is cached under ``$VLKIT_CACHE/shard-index`` keyed by the shard's path, size
and mtime, so a second run reads no tar. Each item is then a :class:`ShardMember`: one
seek and one read of its bytes, so the feature store's DataLoader workers read items in
any order at folder speed. Compressed shards (``.tar.gz``) are refused: members of a
compressed stream have no byte offsets.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from vlkit.data.dataset import ImageDataset, decode_image, drop_unreadable
from vlkit.errors import DataError
from vlkit.io import atomic_write_json, cache_root

log = logging.getLogger("vlkit.data")

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")  # preference order when a sample has several
LABEL_JSON_FIELDS = ("label", "cls")
CLASSNAME_FILES = ("classnames.txt", "classnames.json")
COMPRESSED_SUFFIXES = (".tar.gz", ".tgz", ".tar.bz2", ".tar.xz", ".tar.zst")
INDEX_VERSION = 1
INSTALL_HINT = 'reading WebDataset shards needs the webdataset package: pip install "vlkit[shards]"'


@dataclass(frozen=True, slots=True)
class ShardMember:
    """One image member of a shard: its bytes read with one positioned read, decoded to RGB by calling it."""

    shard: str
    member: str
    offset: int
    size: int

    def read_bytes(self) -> bytes:
        """The member's bytes (a short read, a shard cut after indexing, is a DataError)."""
        try:  # one positioned read: no buffered-reader setup, no shared file offset across forked workers
            handle = os.open(self.shard, os.O_RDONLY | getattr(os, "O_BINARY", 0))
            try:
                if hasattr(os, "pread"):
                    data = os.pread(handle, self.size, self.offset)
                else:  # Windows
                    os.lseek(handle, self.offset, os.SEEK_SET)
                    data = os.read(handle, self.size)
            finally:
                os.close(handle)
        except OSError as exc:
            raise DataError(f"cannot read shard {self.shard}: {exc.strerror or exc} (check the path)") from None
        if len(data) != self.size:
            raise DataError(f"member {self.member} of shard {self.shard} is cut short ({len(data)} of {self.size} "
                            "bytes): the shard changed or is truncated; re-write it, or pass --skip-corrupt")
        return data

    def __call__(self) -> Image.Image:
        return decode_image(io.BytesIO(self.read_bytes()), str(self))

    def __str__(self) -> str:
        return f"{self.member} in shard {self.shard}"


def _webdataset() -> Any:
    try:
        import webdataset
    except ImportError:
        raise DataError(INSTALL_HINT) from None
    return webdataset


def looks_like_shards(spec: str) -> bool:
    """Whether ``spec`` names WebDataset shards: a brace pattern or a file ending ``.tar`` (or a
    compressed tar, refused later with the reason), or a folder holding ``.tar`` files (itself or
    its ``train/``)."""
    lowered = spec.lower()
    if lowered.endswith((".tar", *COMPRESSED_SUFFIXES)) or ("{" in spec and ".tar" in lowered):
        return True
    root = Path(spec).expanduser()
    return root.is_dir() and (_tar_files(root) != [] or (root / "train").is_dir() and _tar_files(root / "train") != [])


def _tar_files(folder: Path) -> list[Path]:
    suffixes = (".tar", *COMPRESSED_SUFFIXES)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(suffixes))


@dataclass
class ShardLayout:
    """What a shard spec names: ``splits`` (``train``/``val``/``test`` -> shards) when it has fixed
    splits, else ``shards``; ``name`` for the dataset; ``folders`` where class-name files are looked for."""

    name: str
    folders: list[Path]
    shards: list[Path] | None = None
    splits: dict[str, list[Path]] | None = None


def shard_layout(spec: str) -> ShardLayout:
    """Resolve a shard spec to its files; a missing shard, a compressed one or a folder that
    mixes shards with class folders is a one-line DataError (so is a missing webdataset package)."""
    wds = _webdataset()
    root = Path(spec).expanduser()
    if root.is_dir():
        if (root / "train").is_dir() and not _tar_files(root):
            present = [s for s in ("train", "val", "test") if (root / s).is_dir()]
            splits = {s: _checked(_tar_files(root / s), root / s) for s in present}
            return ShardLayout(root.name, [root], splits=splits)
        image_folders = [p.name for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
        if image_folders:
            raise DataError(f"{root} holds both .tar shards and folders ({', '.join(image_folders[:3])}): keep shards "
                            "(with classnames.txt) in a folder of their own, or train/, val/, test/ folders of shards")
        return ShardLayout(root.name, [root], shards=_checked(_tar_files(root), root))
    if "{" in spec or "::" in spec:
        paths = [Path(p).expanduser() for p in wds.shardlists.expand_urls(spec)]
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise DataError(f"{len(missing)} of the {len(paths)} shards of {spec} are missing, first: {missing[0]} "
                            "(check the pattern's range)")
    else:
        if not root.is_file():
            raise DataError(f"no shard {spec}: the file does not exist")
        paths = [root]
    folders = list(dict.fromkeys(p.parent for p in paths))
    name = paths[0].parent.name if len(paths) > 1 else paths[0].name.split(".")[0]
    return ShardLayout(name or "shards", folders, shards=_checked(paths, paths[0].parent))


def _checked(paths: list[Path], where: Path) -> list[Path]:
    if not paths:
        raise DataError(f"{where} holds no .tar shards")
    compressed = [p for p in paths if p.name.lower().endswith(COMPRESSED_SUFFIXES)]
    if compressed:
        raise DataError(f"shard {compressed[0]} is compressed: vlkit reads shard members by byte offset, which needs "
                        "uncompressed .tar shards (decompress them, e.g. gunzip, and pass the .tar files)")
    return paths


# ---- class names -----------------------------------------------------------------
def read_classnames(folders: list[Path], shards_for: str) -> list[str]:
    """Class names from ``classnames.txt`` or ``classnames.json`` in the first of ``folders`` holding one."""
    for folder in folders:
        for filename in CLASSNAME_FILES:
            path = folder / filename
            if path.is_file():
                return _parse_classnames(path)
    where = " or ".join(str(f) for f in folders)
    raise DataError(f"no class names for the shards {shards_for}: put classnames.txt (one name per line, line i = "
                    f"label i) or classnames.json (a list, or {{\"0\": name, ...}}) in {where}")


def _parse_classnames(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read class names {path}: {exc}") from None
    if path.suffix == ".txt":
        names = [line.strip() for line in text.splitlines()]
        names = [n for n in names if n and not n.startswith("#")]
    else:
        try:
            content = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(f"class names {path} is not valid JSON: {exc.msg} at line {exc.lineno}") from None
        if isinstance(content, dict):
            try:
                by_index = {int(k): v for k, v in content.items()}
            except ValueError:
                by_index = {}
            if sorted(by_index) != list(range(len(content))):
                raise DataError(f"class names {path}: the keys must be the indices 0..{len(content) - 1}")
            content = [by_index[i] for i in range(len(content))]
        if not isinstance(content, list) or not all(isinstance(n, str) for n in content):
            raise DataError(f"class names {path}: expected a list of names or {{\"0\": name, ...}}")
        names = [n.strip() for n in content]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise DataError(f"class names {path} name {duplicates[0]!r} twice: one line per class")
    return names


# ---- the index pass ----------------------------------------------------------------
def _stat_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return str(path.resolve()), stat.st_size, stat.st_mtime_ns


def _index_path(stat_key: tuple[str, int, int]) -> Path:
    digest = hashlib.sha256(f"{stat_key}|{INDEX_VERSION}".encode()).hexdigest()[:24]
    return cache_root() / "shard-index" / f"{digest}.json"


def shard_index(path: Path) -> list[list]:
    """The samples of one shard, cached: ``[key, image member, offset, size, label]`` in tar order.

    ``image member`` is None for a sample without an image; ``label`` is an int, or a string
    saying why there is none. A missing, empty, non-tar or unreadable shard is a DataError.
    """
    stat_key = _stat_key(path)
    cached = _index_path(stat_key)
    try:
        content = json.loads(cached.read_bytes())
        samples = content["samples"] if content.get("shard") == list(stat_key) else None
        if isinstance(samples, list) and all(isinstance(row, list) and len(row) == 5 for row in samples):
            return samples
    except (OSError, ValueError, AttributeError):
        pass
    samples = _scan_shard(path)
    try:
        atomic_write_json(cached, {"shard": list(stat_key), "samples": samples}, sort_keys=False)
    except OSError as exc:  # a read-only cache costs a re-scan next time, never the run
        log.warning("cannot cache the index of shard %s under %s (%s): the next run reads it again",
                    path, cached.parent, exc.strerror or exc)
    return samples


def _member_table(path: Path) -> dict[str, dict[str, tuple[str, int, int]]]:
    """key -> {lower-case extension: (member name, data offset, size)} of every regular member, in tar
    order, from the tar headers (webdataset's key rule)."""
    keys = _webdataset().tariterators.base_plus_ext
    table: dict[str, dict[str, tuple[str, int, int]]] = {}
    try:
        with tarfile.open(path, mode="r:") as tar:
            for info in tar:
                if not info.isreg() or info.issparse():
                    continue
                prefix, ext = keys(info.name)
                if prefix is not None:
                    table.setdefault(prefix, {})[ext.lower()] = (info.name, info.offset_data, info.size)
            end = tar.offset  # where the end-of-archive marker (two zero blocks) starts
    except tarfile.TarError as exc:
        if path.stat().st_size == 0:
            raise DataError(f"shard {path} is empty (0 bytes): remove it or re-write it") from None
        if table:
            raise DataError(f"shard {path} is cut short or damaged after {len(table)} samples ({exc}): "
                            "re-write it") from None
        raise DataError(f"shard {path} is not an uncompressed tar file ({exc}): pass .tar shards") from None
    if path.stat().st_size < end + 2 * tarfile.BLOCKSIZE:  # tarfile reads a header cut short as the end
        raise DataError(f"shard {path} is cut short (it ends without the tar end-of-archive marker, after "
                        f"{len(table)} samples): re-write it")
    return table


def _scan_shard(path: Path) -> list[list]:
    """Index one shard: offsets from the tar headers, samples and labels from webdataset's stream."""
    wds = _webdataset()
    table = _member_table(path)
    labels: dict[str, dict[str, bytes]] = {}
    try:
        with open(path, "rb") as handle:
            stream = wds.tariterators.tar_file_iterator(
                handle, select_files=lambda fname: fname.lower().endswith((".cls", ".json")))
            for sample in wds.tariterators.group_by_keys({**f, "__url__": str(path)} for f in stream):
                labels[sample["__key__"]] = sample
    except (tarfile.TarError, OSError, ValueError) as exc:
        raise DataError(f"shard {path} cannot be read to its end ({str(exc).split(' @ ')[0]}): it is truncated or "
                        "damaged; re-write it") from None
    samples: list[list] = []
    for key, members in table.items():
        image_ext = next((ext for ext in IMAGE_EXTENSIONS if ext in members), None)
        member, offset, size = members[image_ext] if image_ext else (None, 0, 0)
        samples.append([key, member, offset, size, _label(labels.get(key, {}), key)])
    if not samples:
        raise DataError(f"shard {path} holds no samples (an empty tar): remove it or re-write it")
    return samples


def _label(sample: dict[str, Any], key: str) -> int | str:
    """The sample's integer label from ``.cls`` or ``.json``, else a string saying what is wrong."""
    if "cls" in sample:
        text = sample["cls"].decode("utf-8", "replace").strip()
        try:
            return int(text)
        except ValueError:
            return f"{key}.cls holds {text[:20]!r}, not an integer label"
    if "json" in sample:
        try:
            content = json.loads(sample["json"])
        except (json.JSONDecodeError, UnicodeDecodeError):
            return f"{key}.json is not valid JSON"
        value = next((content[f] for f in LABEL_JSON_FIELDS if isinstance(content, dict) and f in content), None)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        return f"{key}.json has no integer \"label\" or \"cls\" field"
    return f"{key} has no label (add {key}.cls with the class index, or {key}.json with a \"label\" field)"


# ---- the dataset ------------------------------------------------------------------
def load_shard_set(paths: list[Path], classnames: list[str], name: str, skip_corrupt: bool = False) -> ImageDataset:
    """The samples of ``paths`` (in shard order, then tar order) as a dataset of :class:`ShardMember` items.

    A sample without an image or a label is a one-line DataError naming the shard and key, or,
    with ``skip_corrupt``, skipped and counted in ``meta["skipped"]`` (as are images that fail to
    decode). A label outside the class names is always an error. Identity: each shard's path,
    size, mtime and sample keys and labels, so editing a shard changes it.
    """
    items: list[tuple[ShardMember, int]] = []
    skipped: list[str] = []
    digest = hashlib.sha256()
    for path in paths:
        stat_key, shard = _stat_key(path), str(path)  # one string per shard, shared by its items
        digest.update(f"{stat_key}\n".encode())
        for key, member, offset, size, label in shard_index(path):
            digest.update(f"{key}|{label}\n".encode())
            problem = label if isinstance(label, str) else None if member else \
                f"{key} has no image ({', '.join('.' + e for e in IMAGE_EXTENSIONS)})"
            if problem:
                if not skip_corrupt:
                    raise DataError(f"shard {path}: {problem}; fix the shard, or pass --skip-corrupt to skip "
                                    "such samples")
                skipped.append(f"{key} in shard {path}")
                continue
            if not 0 <= label < len(classnames):
                raise DataError(f"sample {key} in shard {path} has label {label}, outside the {len(classnames)} class "
                                f"names 0..{len(classnames) - 1} (check classnames.txt / classnames.json)")
            items.append((ShardMember(shard, member, offset, size), label))
    dataset = ImageDataset(items=items, classnames=classnames, name=name,
                           identity=f"shards:{name}:{digest.hexdigest()[:16]}")
    if skip_corrupt:
        dataset = drop_unreadable(dataset)
        if skipped:
            log.warning("skipped %d shard sample(s) without an image or label in %s, first: %s",
                        len(skipped), name, skipped[0])
            dataset.meta["skipped"] = skipped + dataset.meta.get("skipped", [])
    return dataset
