"""Datasets: ImageFolder, CoOp split files, few-shot sampling, corrupt images, resolver."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from vlkit.data import few_shot, load_image_folder, load_split_file
from vlkit.data.resolve import load_data
from vlkit.errors import DataError


def make_folder(root, classes=("cat", "dog_house"), per_class=6):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def test_image_folder(tmp_path):
    ds = load_image_folder(make_folder(tmp_path / "data"))
    assert ds.classnames == ["cat", "dog house"]
    assert ds.class_counts() == [6, 6]
    assert ds.image(0).mode == "RGB"


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="dataset folder not found"):
        load_image_folder(tmp_path / "missing")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        load_image_folder(tmp_path / "empty")


def test_corrupt_image_named_or_skipped(tmp_path, caplog):
    root = make_folder(tmp_path / "data")
    (root / "cat" / "broken.png").write_bytes(b"not an image")
    ds = load_image_folder(root)
    with pytest.raises(DataError, match="broken.png"):
        [ds.image(i) for i in range(len(ds))]
    kept = load_image_folder(root, skip_corrupt=True)
    assert len(kept) == len(ds) - 1
    assert "skipped 1 unreadable" in caplog.text


def test_split_file(tmp_path):
    make_folder(tmp_path / "images", classes=("a", "b"), per_class=3)
    split = {"train": [["a/0.png", 0, "a"], ["b/0.png", 1, "b"]], "val": [["a/1.png", 0, "a"]],
             "test": [["b/2.png", 1, "b"], ["a/2.png", 0, "a"]]}
    (tmp_path / "split.json").write_text(json.dumps(split))
    test = load_split_file(tmp_path / "split.json", tmp_path / "images", "test")
    assert test.classnames == ["a", "b"] and test.labels == [1, 0]
    assert test.image(0).size == (8, 8)
    with pytest.raises(DataError, match="split 'nope' not in"):
        load_split_file(tmp_path / "split.json", tmp_path / "images", "nope")


def test_few_shot_deterministic_disjoint(colour_pool):
    a, b = few_shot(colour_pool, 4, seed=3), few_shot(colour_pool, 4, seed=3)
    assert a.train.identity == b.train.identity and a.val.identity == b.val.identity
    assert a.train.class_counts() == [4] * 4 and a.val.class_counts() == [4] * 4
    ids = lambda d: {id(src) for src, _ in d.items}
    assert not ids(a.train) & ids(a.val)
    assert few_shot(colour_pool, 2, seed=3).val.class_counts() == [2] * 4  # min(shots, 4)
    assert few_shot(colour_pool, 4, seed=4).train.identity != a.train.identity


def test_few_shot_too_few_images(colour_pool):
    with pytest.raises(DataError, match="has 12 images; 16 shots"):
        few_shot(colour_pool, 16, seed=0)


def test_plain_folder_splits_are_disjoint(tmp_path):
    root = make_folder(tmp_path / "data", per_class=8)
    train, test = load_data(str(root), "train"), load_data(str(root), "test")
    assert test.class_counts() == [2, 2] and train.class_counts() == [6, 6]
    assert not {s for s, _ in train.items} & {s for s, _ in test.items}
    assert len(load_data(str(root), "all")) == 16
