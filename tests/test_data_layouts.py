"""Issue 21: data layouts are read as they are or refused in one line; selection uses the data's val split."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import colour_dataset
from vlkit.apps.commands import fit
from vlkit.cli.main import app
from vlkit.data import MissingSplitError
from vlkit.data.guard import HiddenLabelDataset
from vlkit.data.resolve import load_data
from vlkit.errors import DataError
from vlkit.protocols import DataSource, run_bench
from vlkit.protocols.fewshot import run_fewshot

runner = CliRunner()
COLOURS = {"blue": (30, 40, 200), "dark_red": (150, 20, 20), "green": (30, 180, 40)}  # sorted: folder label order
COUNTS = {"train": 6, "val": 5, "test": 4}
LAYOUT_MESSAGE = "accepted layouts: "


def _image(rgb: tuple[int, int, int], rng: np.random.Generator) -> Image.Image:
    return Image.fromarray(np.clip(np.array(rgb) + rng.normal(0, 30, (16, 16, 3)), 0, 255).astype(np.uint8))


def write_both_layouts(root: Path, split_name: str = "split.json") -> tuple[Path, Path]:
    """The same images twice: ``coop/images/<class>/`` + a CoOp split file, and ``folders/train|val|test/<class>/``."""
    rng = np.random.default_rng(0)
    coop, folders = root / "coop", root / "folders"
    rows: dict[str, list] = {split: [] for split in COUNTS}
    for label, (name, rgb) in enumerate(COLOURS.items()):
        for split, count in COUNTS.items():
            for i in range(count):
                image, rel = _image(rgb, rng), f"{name}/{split}{i:02d}.png"
                for path in (coop / "images" / rel, folders / split / rel):
                    path.parent.mkdir(parents=True, exist_ok=True)
                    image.save(path)
                rows[split].append([rel, label, name])
    (coop / split_name).write_text(json.dumps(rows))
    return coop, folders


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> tuple[Path, Path]:
    return write_both_layouts(tmp_path_factory.mktemp("layouts"))


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))


def one_class_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    (root / "cats").mkdir(parents=True)
    for i in range(8):
        _image((200, 30, 30), rng).save(root / "cats" / f"{i}.png")
    return root


def images_only_folder(root: Path) -> Path:
    rng = np.random.default_rng(2)
    for name, rgb in COLOURS.items():
        (root / "images" / name).mkdir(parents=True)
        for i in range(8):
            _image(rgb, rng).save(root / "images" / name / f"{i}.png")
    return root


# ---- the images/ + split.json layout ------------------------------------------------------------

def test_images_and_split_json_are_read_with_all_their_classes(layouts):
    coop, _ = layouts
    for split, count in COUNTS.items():
        data = load_data(str(coop), split)
        assert data.classnames == ["blue", "dark red", "green"]  # CoOp's spelling: underscores as spaces
        assert data.class_counts() == [count] * 3
        assert all(Path(src).parent.parent == coop / "images" for src, _ in data.items)


def test_zeroshot_on_images_and_split_json_scores_every_class(layouts, cache, tmp_path):
    coop, _ = layouts
    out = tmp_path / "zs.json"
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(coop), "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["split"] == "test" and record["test_size"] == 3 * COUNTS["test"]
    assert sorted(record["per_class"]) == ["blue", "dark red", "green"]  # not one class "images" at 100 %


@pytest.mark.parametrize("name", ["split_zhou_MyColours.json", "split_mine.json"])
def test_a_users_own_split_file_name_is_accepted(tmp_path, name):
    coop, _ = write_both_layouts(tmp_path, split_name=name)
    train = load_data(str(coop), "train")
    assert train.class_counts() == [COUNTS["train"]] * 3
    assert load_data(str(coop), "val").meta["split_file"].endswith(name)


def test_split_paths_relative_to_the_folder_itself_are_found(tmp_path):
    coop, _ = write_both_layouts(tmp_path)
    rows = json.loads((coop / "split.json").read_text())
    (coop / "split.json").write_text(json.dumps({s: [[f"images/{r}", y, c] for r, y, c in v] for s, v in rows.items()}))
    assert load_data(str(coop), "test").class_counts() == [COUNTS["test"]] * 3


def test_broken_split_files_are_one_line_errors(tmp_path):
    coop, _ = write_both_layouts(tmp_path)
    (coop / "split_other.json").write_text("{}")
    with pytest.raises(DataError, match="exactly one CoOp split file"):
        load_data(str(coop), "train")
    (coop / "split_other.json").unlink()
    (coop / "split.json").write_text(json.dumps({"train": [["nope/1.png", 0, "a"], ["nope/2.png", 1, "b"]]}))
    with pytest.raises(DataError, match="'nope/1.png', which is not at"):
        load_data(str(coop), "train")
    (coop / "split.json").write_text(json.dumps([1, 2]))
    with pytest.raises(DataError, match="not a CoOp split file"):
        load_data(str(coop), "train")


def test_fit_linear_probe_one_shot_on_images_and_split_json(layouts, cache, tmp_path):
    coop, _ = layouts
    out = tmp_path / "fit.json"
    result = runner.invoke(app, ["fit", "linear-probe", "--model", "test-tiny", "--data", str(coop), "--shots", "1",
                                 "--views", "1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["test_size"] == 3 * COUNTS["test"] and 0 <= record["top1"] <= 100
    assert record["validation"]["source"] == "val-split" and record["validation"]["size"] == 3 * COUNTS["val"]


# ---- layouts that would be misread: one line, exit 1 --------------------------------------------

@pytest.mark.parametrize("make, found", [(one_class_folder, "1 class folder (cats)"),
                                         (images_only_folder, "holds images/ but no CoOp split file")])
@pytest.mark.parametrize("command", [
    ["zeroshot"], ["fit", "linear-probe", "--shots", "1", "--views", "1"],
    ["bench", "--methods", "zero-shot", "--shots", "1", "--seeds", "1"],
])
def test_misreadable_folders_are_one_line_errors_from_every_command(make, found, command, cache, tmp_path):
    root = make(tmp_path / "data")
    extra = ["--out", str(tmp_path / "bench")] if command[0] == "bench" else []
    result = runner.invoke(app, [*command, "--model", "test-tiny", "--data", str(root), *extra])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and found in lines[0] and LAYOUT_MESSAGE in lines[0], result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("arrange, found", [
    (lambda r: [(r / s).mkdir() for s in ("val", "test")], "class folders named test, val"),
    (lambda r: (r / "cats" / "kittens").mkdir() or (r / "cats" / "0.png").rename(r / "cats" / "kittens" / "0.png"),
     "holds sub-folders of images (kittens)"),
    (lambda r: (r / "cats" / "split.json").write_text("{}"), "holds a split file (split.json)"),
])
def test_class_folders_that_look_like_another_layout_are_refused(arrange, found, tmp_path):
    root = one_class_folder(tmp_path / "data")
    (root / "dogs").mkdir()
    (root / "cats" / "1.png").rename(root / "dogs" / "1.png")
    arrange(root)
    with pytest.raises(DataError, match="accepted layouts") as info:
        load_data(str(root), "train")
    assert found in str(info.value)


def test_a_plain_folder_has_no_val_split(tmp_path):
    root = images_only_folder(tmp_path / "plain") / "images"  # a plain ImageFolder of 3 classes
    with pytest.raises(MissingSplitError):
        load_data(str(root), "val")


# ---- validation from the data's own val split ---------------------------------------------------

def _spy_validation(monkeypatch) -> list:
    """Record the few-shot splits that build_task draws."""
    import vlkit.protocols.fewshot as protocol

    seen, original = [], protocol.few_shot
    monkeypatch.setattr(protocol, "few_shot", lambda *a, **k: seen.append(original(*a, **k)) or seen[-1])
    return seen


def test_train_val_test_folders_validate_on_val_by_default(layouts, cache, monkeypatch):
    _, folders = layouts
    seen = _spy_validation(monkeypatch)
    default = fit("linear-probe", "test-tiny", None, str(folders), shots=2, seed=1, views=1)
    paper = fit("linear-probe", "test-tiny", None, str(folders), shots=2, seed=1, views=1, val="from-train")
    assert {Path(src).parts[-3] for src, _ in seen[0].val.items} == {"val"}
    assert seen[0].val.class_counts() == [COUNTS["val"]] * 3  # all 5 (under the cap of 16)
    assert {Path(src).parts[-3] for src, _ in seen[1].val.items} == {"train"}
    assert seen[1].val.class_counts() == [2] * 3  # min(K, 4)
    assert seen[0].train.items == seen[1].train.items  # the same training sample either way
    assert default["validation"] == {"source": "val-split", "per_class": 16, "size": 15, "val_mode": "auto"}
    assert paper["validation"] == {"source": "from-train", "per_class": 2, "size": 6, "val_mode": "from-train"}


def test_val_per_class_caps_a_seeded_draw(layouts, cache, monkeypatch):
    _, folders = layouts
    seen = _spy_validation(monkeypatch)
    for seed in (1, 1, 2):
        fit("zero-shot", "test-tiny", None, str(folders), shots=1, seed=seed, views=1, val_per_class=2)
    assert [s.val.class_counts() for s in seen] == [[2] * 3] * 3
    assert seen[0].val.items == seen[1].val.items != seen[2].val.items
    with pytest.raises(DataError, match="--val-per-class"):
        fit("zero-shot", "test-tiny", None, str(folders), shots=1, seed=1, views=1, val_per_class=0)


def test_data_without_a_val_split_falls_back_and_says_so(tmp_path, cache):
    root = images_only_folder(tmp_path / "plain") / "images"
    result = fit("zero-shot", "test-tiny", None, str(root), shots=1, seed=1, views=1)
    assert result["validation"]["source"] == "from-train" and "no val split" in result["validation"]["fallback"]
    with pytest.raises(DataError, match="has no val split"):
        fit("zero-shot", "test-tiny", None, str(root), shots=1, seed=1, views=1, val="split")


@pytest.mark.parametrize("method", ["linear-probe", "tip-adapter"])
def test_both_layouts_give_identical_numbers(layouts, cache, method):
    coop, folders = layouts
    a = fit(method, "test-tiny", None, str(coop), shots=2, seed=3, views=2)
    b = fit(method, "test-tiny", None, str(folders), shots=2, seed=3, views=2)
    assert a["validation"] == b["validation"] and a["validation"]["source"] == "val-split"
    for key in ("top1", "mean_per_class", "per_class", "test_size", "fit_info"):
        assert a[key] == b[key], key


def test_bench_keys_cells_by_validation_protocol(tmp_path, tiny_backbone, session_store):
    source = DataSource.from_datasets("colours-val", colour_dataset(8, seed=0), colour_dataset(4, seed=1, name="t"),
                                      val=colour_dataset(5, seed=2, name="v"))
    args = dict(data=[source], methods="zero-shot", shots=[1], seeds=[1], out=tmp_path, views=1,
                backbone=tiny_backbone, store=session_store, fail_fast=True)
    first = run_bench(**args)
    assert (first["ran"], run_bench(**args)["ran"]) == (1, 0)
    assert run_bench(**args, val="from-train")["ran"] == 1  # another protocol: another cell, never a reuse
    assert run_bench(**args, val_per_class=3)["ran"] == 1
    records = [json.loads(line) for line in (tmp_path / "cells.jsonl").read_text().splitlines()]
    assert [r["cell"]["val"] for r in records] == ["auto:16", "from-train", "auto:3"]
    assert [r["result"]["validation"]["source"] for r in records] == ["val-split", "from-train", "val-split"]
    assert [r["result"]["validation"]["size"] for r in records] == [20, 4, 12]


def test_test_labels_are_read_only_after_fit_with_a_val_split(tiny_backbone, session_store):
    test = HiddenLabelDataset(colour_dataset(4, seed=1, name="hidden-test"))
    result = run_fewshot(tiny_backbone, colour_dataset(8, seed=0), test, "linear-probe", 2, 1, session_store,
                         views=1, val_set=colour_dataset(5, seed=2, name="v"))
    assert test._revealed and result["validation"]["source"] == "val-split"
