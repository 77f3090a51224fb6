"""Issue 17 part 2: WebDataset shards as a data source, read exactly as the same images in a folder."""
from __future__ import annotations

import io
import json
import os
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("webdataset")

from vlkit.apps.commands import fit  # noqa: E402
from vlkit.cli.main import app  # noqa: E402
from vlkit.data import MissingSplitError, few_shot  # noqa: E402
from vlkit.data import webdataset_source  # noqa: E402
from vlkit.data.resolve import has_splits, load_data  # noqa: E402
from vlkit.errors import DataError  # noqa: E402
from vlkit.features.store import FeatureStore  # noqa: E402

# Sorted: the folder's label order. Close colours under heavy noise: a 2-shot probe on test-tiny makes mistakes.
COLOURS = {"blue": (128, 128, 138), "dark_red": (138, 128, 128), "green": (128, 138, 128)}
PER_CLASS = 9


def _image(rgb: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.clip(np.array(rgb) + rng.normal(0, 60, (16, 16, 3)), 0, 255).astype(np.uint8))


def _encode(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def write_folder(root: Path) -> list[tuple[str, bytes, int]]:
    """A plain ImageFolder (PNG and JPEG files); returns (file name, bytes, label) in the folder loader's order."""
    rng = np.random.default_rng(0)
    files = []
    for label, (name, rgb) in enumerate(COLOURS.items()):
        for i in range(PER_CLASS):
            fmt, ext = ("JPEG", "jpg") if i % 2 else ("PNG", "png")
            data, filename = _encode(_image(rgb, rng), fmt), f"{name}{i:02d}.{ext}"
            (root / name).mkdir(parents=True, exist_ok=True)
            (root / name / filename).write_bytes(data)
            files.append((filename, data, label))
    return files


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(folder: Path, files: list[tuple[str, bytes, int]], per_shard: int = 10,
                 classnames: bool = True) -> list[Path]:
    """``files`` as shards ``shards-00000{0..}.tar`` of ``per_shard`` samples; even shards label with
    ``.cls``, odd ones with ``.json``; ``classnames.txt`` beside them."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for number, start in enumerate(range(0, len(files), per_shard)):
        path = folder / f"shards-{number:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for filename, data, label in files[start:start + per_shard]:
                key = filename.split(".")[0]
                add_member(tar, filename, data)
                if number % 2:
                    add_member(tar, f"{key}.json", json.dumps({"label": label, "caption": key}).encode())
                else:
                    add_member(tar, f"{key}.cls", str(label).encode())
        paths.append(path)
    if classnames:
        (folder / "classnames.txt").write_text("".join(f"{name.replace('_', ' ')}\n" for name in COLOURS))
    return paths


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))


@pytest.fixture()
def both(tmp_path, cache) -> tuple[Path, Path, list[Path]]:
    """The same images as a folder and as 3 shards."""
    files = write_folder(tmp_path / "folder")
    return tmp_path / "folder", tmp_path / "shards", write_shards(tmp_path / "shards", files)


def _names(dataset) -> list[str]:
    """Each item's file name: the folder's file, the shard's member."""
    return [src.member if isinstance(src, webdataset_source.ShardMember) else Path(src).name
            for src, _ in dataset.items]


def test_the_three_spellings_of_shards_read_the_same_samples(both):
    _, folder, paths = both
    pattern = str(folder / "shards-{000000..000002}.tar")
    by_pattern, by_folder = load_data(pattern, "all"), load_data(str(folder), "all")
    assert _names(by_pattern) == _names(by_folder) and by_pattern.identity == by_folder.identity
    single = load_data(str(paths[0]), "all")
    assert _names(single) == _names(by_folder)[:10] and single.labels == [0] * 9 + [1]
    assert by_folder.classnames == ["blue", "dark red", "green"]


def test_folder_and_shards_give_identical_features_and_few_shot_samples(both, tiny_backbone, tmp_path):
    image_folder, shards, _ = both
    folder_all, shard_all = load_data(str(image_folder), "all"), load_data(str(shards), "all")
    assert _names(folder_all) == _names(shard_all) and folder_all.labels == shard_all.labels
    assert folder_all.classnames == shard_all.classnames and folder_all.identity != shard_all.identity
    # 2 store shards (the boundary too), read by a DataLoader worker process (items cross a pickle)
    store = FeatureStore(tmp_path / "store", shard_size=16, num_workers=1, batch_size=8)
    a, b = store.image_features(tiny_backbone, folder_all), store.image_features(tiny_backbone, shard_all)
    assert a.shape == (27, tiny_backbone.embed_dim) and np.array_equal(a.numpy(), b.numpy())
    for split in ("train", "test"):  # the plain rule (every 4th per class is test) picks the same images
        assert _names(load_data(str(image_folder), split)) == _names(load_data(str(shards), split))
    folder_split = few_shot(load_data(str(image_folder), "train"), shots=2, seed=3)
    shard_split = few_shot(load_data(str(shards), "train"), shots=2, seed=3)
    for part in ("train", "val"):
        x, y = getattr(folder_split, part), getattr(shard_split, part)
        assert _names(x) == _names(y) and x.labels == y.labels and len(x) == 6
    augmented = store.image_features(tiny_backbone, shard_split.train, view=1)  # augmented view: same seeded crop
    assert np.array_equal(augmented.numpy(), store.image_features(tiny_backbone, folder_split.train, view=1).numpy())


def test_fit_gives_the_same_accuracy_on_a_folder_and_on_its_shards(both):
    image_folder, shards, _ = both
    a = fit("linear-probe", "test-tiny", None, str(image_folder), shots=2, seed=1, views=1)
    b = fit("linear-probe", "test-tiny", None, str(shards), shots=2, seed=1, views=1)
    assert 0 < a["top1"] < 100 and a["top1"] == b["top1"] and a["per_class"] == b["per_class"]
    assert a["test_size"] == b["test_size"] == 6 and a["validation"]["size"] == b["validation"]["size"] == 6


def _corrupt_second_member(path: Path) -> str:
    """Re-write ``path`` with its second image's bytes replaced by garbage of another length; returns that member."""
    with tarfile.open(path) as tar:
        members = [(info.name, tar.extractfile(info).read()) for info in tar]
    with tarfile.open(path, "w") as tar:
        for i, (name, data) in enumerate(members):
            add_member(tar, name, b"not an image at all" if i == 2 else data)
    return members[2][0]


def test_a_corrupt_member_is_one_line_naming_shard_and_member_or_skipped_and_counted(both, tiny_backbone, tmp_path):
    _, shards, paths = both
    bad = _corrupt_second_member(paths[1])
    dataset = load_data(str(shards), "all")  # the index reads labels and offsets, not images
    store = FeatureStore(tmp_path / "store", num_workers=0)
    with pytest.raises(DataError) as error:
        store.image_features(tiny_backbone, dataset)
    message = str(error.value)
    assert "\n" not in message and bad in message and str(paths[1]) in message and "--skip-corrupt" in message
    result = CliRunner().invoke(app, ["features", "extract", "--model", "test-tiny", "--data", str(shards)])
    assert result.exit_code == 1 and bad in result.output and str(paths[1]) in result.output
    kept = load_data(str(shards), "all", skip_corrupt=True)
    assert len(kept) == 26 and bad not in _names(kept)
    assert kept.meta["skipped"] == [f"{bad} in shard {paths[1]}"]
    assert store.image_features(tiny_backbone, kept).shape[0] == 26


def test_the_label_index_is_cached_and_rebuilt_when_a_shard_changes(both, monkeypatch):
    _, shards, paths = both
    scanned: list[str] = []
    scan = webdataset_source._scan_shard
    monkeypatch.setattr(webdataset_source, "_scan_shard", lambda path: scanned.append(path.name) or scan(path))
    first = load_data(str(shards), "all")
    assert sorted(scanned) == [p.name for p in paths]
    opened: list[str] = []
    real_open = tarfile.open
    monkeypatch.setattr(tarfile, "open", lambda *a, **k: opened.append(str(a[:1])) or real_open(*a, **k))
    scanned.clear()
    second = load_data(str(shards), "test")
    assert scanned == [] and opened == [] and second.labels == [0, 0, 1, 1, 2, 2]
    _corrupt_second_member(paths[2])  # same samples, other bytes: a new size and mtime
    os.utime(paths[2], ns=(1, 1))
    changed = load_data(str(shards), "all")
    assert scanned == [paths[2].name] and changed.identity != first.identity


def test_fixed_splits_from_train_val_test_folders_of_shards(tmp_path, cache):
    files = write_folder(tmp_path / "folder")
    root = tmp_path / "splits"
    write_shards(root / "train", files[0:5] + files[9:14] + files[18:23], per_shard=8, classnames=False)
    write_shards(root / "test", files[5:9] + files[14:18] + files[23:27], classnames=False)
    (root / "classnames.json").write_text(json.dumps({"0": "blue", "1": "dark red", "2": "green"}))
    assert has_splits(str(root)) and not has_splits(str(tmp_path / "folder"))
    train, test = load_data(str(root), "train"), load_data(str(root), "test")
    assert (len(train), len(test)) == (15, 12) and train.classnames == ["blue", "dark red", "green"]
    assert train.labels == [0] * 5 + [1] * 5 + [2] * 5
    with pytest.raises(MissingSplitError, match="no val/ folder of shards"):
        load_data(str(root), "val")
    with pytest.raises(DataError, match="fixed splits"):
        load_data(str(root), "all")


def _tar(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            add_member(tar, name, data)
    return path


PNG = _encode(Image.new("RGB", (8, 8), (10, 20, 30)), "PNG")
BAD_SHARDS = {
    "missing label": ({"a.png": PNG, "a.cls": b"0", "b.png": PNG}, r"b has no label \(add b.cls"),
    "label not an integer": ({"a.png": PNG, "a.cls": b"cat"}, r"a.cls holds 'cat', not an integer label"),
    "json without a label": ({"a.png": PNG, "a.json": b'{"caption": "x"}'}, r'a.json has no integer "label"'),
    "unknown label index": ({"a.png": PNG, "a.cls": b"7"}, r"has label 7, outside the 2 class names"),
    "no image": ({"a.txt": b"hello", "a.cls": b"0"}, r"a has no image \(.jpg"),
    "empty shard": ({}, r"holds no samples \(an empty tar\)"),
}


@pytest.mark.parametrize("case", sorted(BAD_SHARDS))
def test_bad_shards_are_one_line_errors(tmp_path, cache, case):
    members, expected = BAD_SHARDS[case]
    shard = _tar(tmp_path / "d" / "bad.tar", members)
    (tmp_path / "d" / "classnames.txt").write_text("cat\ndog\n")
    with pytest.raises(DataError, match=expected) as error:
        load_data(str(shard), "all")
    assert "\n" not in str(error.value) and str(shard) in str(error.value)


@pytest.mark.parametrize("where", ["data", "header"])
def test_a_shard_cut_short_is_one_line_at_load(both, where):
    _, shards, paths = both
    with tarfile.open(paths[2]) as tar:
        last = [info for info in tar.getmembers() if info.name.endswith((".png", ".jpg"))][-1]
    cut = last.offset_data + 10 if where == "data" else last.offset + 100  # in its bytes / in its header
    paths[2].write_bytes(paths[2].read_bytes()[:cut])
    with pytest.raises(DataError, match=r"shards-000002.tar is cut short") as error:
        load_data(str(shards), "all")
    assert "\n" not in str(error.value)


def test_unusable_files_and_missing_class_names_are_one_line_errors(tmp_path, cache):
    folder = tmp_path / "d"
    folder.mkdir()
    (folder / "classnames.txt").write_text("cat\ndog\n")
    (folder / "empty.tar").write_bytes(b"")
    (folder / "text.tar").write_text("this is not a tar file\n" * 100)
    (folder / "packed.tar.gz").write_bytes(b"\x1f\x8b")
    for name, expected in (("empty.tar", "is empty \\(0 bytes\\)"), ("text.tar", "not an uncompressed tar file"),
                           ("packed.tar.gz", "is compressed"), ("missing.tar", "no shard .* does not exist")):
        with pytest.raises(DataError, match=expected):
            load_data(str(folder / name), "all")
    with pytest.raises(DataError, match=r"1 of the 2 shards of .* are missing, first: .*text-000001.tar"):
        _tar(folder / "text-000000.tar", {"a.png": PNG, "a.cls": b"0"})
        load_data(str(folder / "text-{000000..000001}.tar"), "all")
    (folder / "classnames.txt").unlink()
    with pytest.raises(DataError, match=r"no class names for the shards .*: put classnames.txt") as error:
        load_data(str(folder / "text-000000.tar"), "all")
    assert "\n" not in str(error.value)


def test_class_names_from_json_list_and_mixed_folders_refused(tmp_path, cache):
    shard = _tar(tmp_path / "d" / "s.tar", {"a.png": PNG, "a.cls": b"1", "b.png": PNG, "b.json": b'{"cls": 0}'})
    (tmp_path / "d" / "classnames.json").write_text('["cat", "dog"]')
    dataset = load_data(str(shard), "all")
    assert dataset.classnames == ["cat", "dog"] and dataset.labels == [1, 0]
    (tmp_path / "d" / "images").mkdir()
    with pytest.raises(DataError, match="holds both .tar shards and folders"):
        load_data(str(tmp_path / "d"), "all")


def test_without_webdataset_shards_name_the_extra(tmp_path, cache, monkeypatch):
    shard = _tar(tmp_path / "d" / "s.tar", {"a.png": PNG, "a.cls": b"1"})
    (tmp_path / "d" / "classnames.txt").write_text("cat\ndog\n")
    monkeypatch.setitem(sys.modules, "webdataset", None)
    with pytest.raises(DataError, match=r'pip install "vlkit\[shards\]"'):
        load_data(str(shard), "all")
