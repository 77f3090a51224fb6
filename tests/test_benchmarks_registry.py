"""The 11-benchmark registry: class counts, templates, lookup, and loading CoOp's layout."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlkit.data.coop_suite import BENCHMARKS, COOP_DATASETS_GUIDE, benchmark_info, load_benchmark
from vlkit.errors import DataError, VlkitError

NUM_CLASSES = {
    "ImageNet": 1000, "Caltech101": 100, "OxfordPets": 37, "StanfordCars": 196, "Flowers102": 102,
    "Food101": 101, "FGVCAircraft": 100, "SUN397": 397, "DTD": 47, "EuroSAT": 10, "UCF101": 101,
}

# CoOp trainers/zsclip.py CUSTOM_TEMPLATES.
COOP_TEMPLATES = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "Flowers102": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DTD": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
}


def test_registry_has_the_eleven_benchmarks_with_their_class_counts() -> None:
    assert list(BENCHMARKS) == list(NUM_CLASSES)
    for name, count in NUM_CLASSES.items():
        info = BENCHMARKS[name]
        assert info.num_classes == count, name
        repeated = {c for c in info.classnames if info.classnames.count(c) > 1}
        # CLIP's ImageNet list (copied by CoOp and open_clip) names two class pairs alike.
        assert repeated == ({"missile", "sunglasses"} if name == "ImageNet" else set()), name
        assert all(c == c.strip() and "_" not in c for c in info.classnames), name


def test_templates_have_exactly_one_slot_and_match_coop() -> None:
    for name, info in BENCHMARKS.items():
        assert info.coop_template == COOP_TEMPLATES[name]
        assert info.clip_templates, name
        for template in (info.coop_template, *info.clip_templates):
            assert template.count("{}") == 1, (name, template)
            assert template.format("x")
    assert len(BENCHMARKS["ImageNet"].clip_templates) == 80


def test_class_name_spot_checks() -> None:
    assert BENCHMARKS["EuroSAT"].classnames[0] == "Annual Crop Land"
    assert BENCHMARKS["Caltech101"].classnames[:4] == ("face", "leopard", "motorbike", "accordion")
    assert BENCHMARKS["OxfordPets"].classnames[:2] == ("abyssinian", "american bulldog")
    assert BENCHMARKS["StanfordCars"].classnames[0] == "2000 AM General Hummer SUV"
    assert BENCHMARKS["SUN397"].classnames[8] == "outdoor apartment building"
    assert BENCHMARKS["UCF101"].classnames[-1] == "Yo Yo"
    assert BENCHMARKS["Flowers102"].classnames[0] == "pink primrose"


def test_imagenet_names_match_open_clip() -> None:
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    info = BENCHMARKS["ImageNet"]
    assert list(info.classnames) == list(IMAGENET_CLASSNAMES)
    assert list(info.clip_templates) == [t("{}") for t in OPENAI_IMAGENET_TEMPLATES]


def test_lookup_ignores_case_and_accepts_coop_names() -> None:
    assert benchmark_info("oxfordpets").name == "OxfordPets"
    assert benchmark_info("OXFORD_PETS").name == "OxfordPets"
    assert benchmark_info("DescribableTextures").name == "DTD"
    assert benchmark_info("oxford_flowers").name == "Flowers102"
    assert benchmark_info("caltech-101").name == "Caltech101"


def test_unknown_benchmark_lists_known_names() -> None:
    with pytest.raises(DataError) as err:
        benchmark_info("cifar10")
    message = str(err.value)
    assert "cifar10" in message and "OxfordPets" in message and "UCF101" in message
    assert "\n" not in message


def _png(path: Path, colour: tuple[int, int, int] = (120, 30, 200)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)


def _fake_pets(root: Path) -> Path:
    base = root / "oxford_pets"
    split = {
        "train": [["Abyssinian_1.jpg", 0, "abyssinian"], ["american_bulldog_1.jpg", 1, "american_bulldog"]],
        "val": [["Abyssinian_2.jpg", 0, "abyssinian"]],
        "test": [["american_bulldog_2.jpg", 1, "american_bulldog"], ["Abyssinian_3.jpg", 0, "abyssinian"],
                 ["american_bulldog_3.jpg", 1, "american_bulldog"]],
    }
    for rows in split.values():
        for rel, _, _ in rows:
            _png(base / "images" / rel)
    base.mkdir(parents=True, exist_ok=True)
    (base / "split_zhou_OxfordPets.json").write_text(json.dumps(split))
    return base


def test_load_benchmark_reads_coop_split_json(tmp_path: Path) -> None:
    base = _fake_pets(tmp_path)
    test = load_benchmark("OxfordPets", tmp_path, "test")
    assert len(test) == 3
    assert test.items[0] == (str(base / "images" / "american_bulldog_2.jpg"), 1)
    assert test.labels == [1, 0, 1]
    assert test.classnames == ["abyssinian", "american bulldog"]
    assert test.templates == ["a photo of a {}, a type of pet."]
    assert test.meta["benchmark"] == "OxfordPets"
    assert test.image(0).size == (4, 4)

    train = load_benchmark("oxford_pets", tmp_path, "train", templates="coop")
    assert len(train) == 2 and train.templates == [COOP_TEMPLATES["OxfordPets"]]
    assert train.identity != test.identity


def test_load_benchmark_sets_the_clip_ensemble(tmp_path: Path) -> None:
    base = tmp_path / "eurosat"
    split = {s: [["Forest/Forest_1.jpg", 0, "Forest"], ["River/River_1.jpg", 1, "River"]]
             for s in ("train", "val", "test")}
    for rel, _, _ in split["test"]:
        _png(base / "2750" / rel)
    (base / "split_zhou_EuroSAT.json").write_text(json.dumps(split))
    ds = load_benchmark("eurosat", tmp_path, "val")
    assert ds.classnames == ["Forest", "River"]
    assert ds.templates == list(BENCHMARKS["EuroSAT"].clip_templates) and len(ds.templates) == 3


def test_load_imagenet_folders_with_classnames_txt(tmp_path: Path) -> None:
    base = tmp_path / "imagenet"
    for split in ("train", "val"):
        for wnid in ("n01440764", "n01443537"):
            _png(base / "images" / split / wnid / f"{wnid}_{split}.png")
    (base / "classnames.txt").write_text("n01440764 tench\nn01443537 goldfish\n")
    train = load_benchmark("ImageNet", tmp_path, "train")
    assert train.classnames == ["tench", "goldfish"]
    assert train.labels == [0, 1]
    assert len(train.templates) == 80
    test = load_benchmark("imagenet", tmp_path, "test")
    assert test.items[0][0].endswith("n01440764_val.png")
    with pytest.raises(DataError, match="no validation split"):
        load_benchmark("ImageNet", tmp_path, "val")


def test_load_fgvc_aircraft_list_files(tmp_path: Path) -> None:
    base = tmp_path / "fgvc_aircraft"
    (base / "images").mkdir(parents=True)
    (base / "variants.txt").write_text("707-320\nF-16A/B\n")
    (base / "images_variant_test.txt").write_text("1000001 F-16A/B\n1000002 707-320\n")
    ds = load_benchmark("FGVCAircraft", tmp_path, "test")
    assert ds.items == [(str(base / "images" / "1000001.jpg"), 1), (str(base / "images" / "1000002.jpg"), 0)]
    assert ds.classnames == ["707-320", "F-16A/B"]


def test_missing_root_is_a_one_line_error(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError) as err:
        load_benchmark("OxfordPets", missing, "test")
    message = str(err.value)
    assert str(missing) in message and "DATASETS.md" in message and COOP_DATASETS_GUIDE in message
    assert "\n" not in message


def test_missing_split_file_names_it(tmp_path: Path) -> None:
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_benchmark("DTD", tmp_path, "test")
    assert str(tmp_path / "dtd" / "split_zhou_DescribableTextures.json") in str(err.value)
    with pytest.raises(DataError, match="dataset folder not found"):
        load_benchmark("Food101", tmp_path, "test")


def test_bad_split_and_template_kind(tmp_path: Path) -> None:
    _fake_pets(tmp_path)
    with pytest.raises(DataError, match="unknown split"):
        load_benchmark("OxfordPets", tmp_path, "validation")
    with pytest.raises(VlkitError, match="template kind"):
        load_benchmark("OxfordPets", tmp_path, "test", templates="fancy")
