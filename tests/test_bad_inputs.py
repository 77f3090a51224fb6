"""Issue 21, item 10: every broken input ends in one line on stderr and exit code 1.

A parametrised matrix over the CLI: damaged saved runs, a run that names state outside
its folder, bad option values, a decompression bomb, an existing run under ``--run-dir``.
Each row asserts exit code 1, exactly one non-empty stderr line naming the problem, no
traceback, and that nothing in the row's folder changed (nothing half-written). Also:
Ctrl-C in ``vlkit fewshot`` keeps what finished (exit 130), and ``--skip-corrupt`` skips
a bomb as corrupt. Everything runs on the test-tiny model and a 16-image folder.
"""
from __future__ import annotations

import hashlib
import re
import json
import shutil
import struct
import zlib
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlkit.cli.main import app

runner = CliRunner()
CLASSES = ["red", "blue"]


def write_colour_folder(root: Path, per_class: int = 8, classes: tuple[str, ...] = ("red", "blue")) -> Path:
    """``root/<class>/<i>.png``: 16x16 noisy colour patches, one colour per class."""
    rng = np.random.default_rng(0)
    colours = {"red": (200, 30, 30), "blue": (30, 40, 200)}
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(colours[name]) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")
    return root


def bomb_png(path: Path, width: int = 20000, height: int = 10000) -> Path:
    """A valid 1-bit PNG of width x height (200 M pixels: over twice PIL's bomb limit), ~25 KB on disk."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    row = b"\x00" * (1 + (width + 7) // 8)  # filter byte + packed bits
    packer = zlib.compressobj(9)
    body = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` (relative path -> content digest; folders as 'dir')."""
    return {str(p.relative_to(root)): "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A colour folder, a fitted run (`fit --run-dir`) and an upgrade run, built once."""
    base = tmp_path_factory.mktemp("bad_inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("VLKIT_CACHE", str(base / "cache"))
        folder = write_colour_folder(base / "imgs")
        fit_run = base / "fit-run"
        result = runner.invoke(app, ["fit", "linear-probe", "--model", "test-tiny", "--data", str(folder),
                                     "--shots", "2", "--views", "1", "--run-dir", str(fit_run)])
        assert result.exit_code == 0, result.output
        classes = base / "classes.txt"
        classes.write_text("\n".join(CLASSES))
        up_run = base / "up-run"
        result = runner.invoke(app, ["upgrade", "init", str(up_run), "--model", "test-tiny", "--classes",
                                     str(classes)])
        assert result.exit_code == 0, result.output
        yield {"base": base, "folder": folder, "fit_run": fit_run, "up_run": up_run}


@pytest.fixture()
def ws(built, tmp_path, monkeypatch):
    """The row's own folder, with copies of both runs (``fit-run``, ``up-run``) to damage."""
    monkeypatch.setenv("VLKIT_CACHE", str(built["base"] / "cache"))
    shutil.copytree(built["fit_run"], tmp_path / "fit-run")
    shutil.copytree(built["up_run"], tmp_path / "up-run")
    return {"tmp": tmp_path, "folder": str(built["folder"]), "fit_run": tmp_path / "fit-run",
            "up_run": tmp_path / "up-run", "image": str(built["folder"] / "red" / "0.png")}


def _up_state(ws: dict) -> Path:
    return ws["up_run"] / json.loads((ws["up_run"] / "run.json").read_text())["state"]


def _edit_json(path: Path, change: Callable[[dict], None]) -> None:
    content = json.loads(path.read_text())
    change(content)
    path.write_text(json.dumps(content))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _other_run(ws: dict) -> Path:
    """A valid upgrade run beside the row's run (the target of a run.json that points outside)."""
    other = ws["tmp"] / "other-run"
    shutil.copytree(ws["up_run"], other)
    return other


# ---- the rows: prepare(ws) -> (argv, words the one stderr line must hold) -------------
def damaged_fit_config(ws):
    (ws["fit_run"] / "method" / "config.json").write_text("{not json")
    return ["eval", str(ws["fit_run"])], ["config.json", "vlkit fit"]


def damaged_fit_state(ws):
    _truncate(ws["fit_run"] / "method" / "state.safetensors")
    return ["eval", str(ws["fit_run"])], ["state.safetensors", "vlkit fit"]


def extra_key_fit_config(ws):
    _edit_json(ws["fit_run"] / "method" / "config.json", lambda c: c["config"].update(bogus=1))
    return ["eval", str(ws["fit_run"])], ["config.json", "bogus"]


def garbage_fit_run_json(ws):
    (ws["fit_run"] / "run.json").write_bytes(b"\x00\xffgarbage")
    return ["eval", str(ws["fit_run"])], ["run.json", "vlkit fit"]


def fit_run_json_not_a_record(ws):
    (ws["fit_run"] / "run.json").write_text("[1, 2]")
    return ["eval", str(ws["fit_run"])], ["run.json"]


def damaged_upgrade_config_predict(ws):
    (_up_state(ws) / "config.json").write_text("garbage")
    return ["predict", str(ws["up_run"]), ws["image"]], ["config.json", "upgrade init"]


def damaged_upgrade_state_add(ws):
    _truncate(_up_state(ws) / "state.safetensors")
    return ["upgrade", "add", str(ws["up_run"]), ws["image"], "--label", "red"], ["state.safetensors"]


def extra_key_upgrade_config_add(ws):
    _edit_json(_up_state(ws) / "config.json", lambda c: c["config"].update(bogus=1))
    return ["upgrade", "add", str(ws["up_run"]), ws["image"], "--label", "red"], ["config.json", "bogus"]


def garbage_upgrade_run_json_predict(ws):
    (ws["up_run"] / "run.json").write_bytes(b"\x00\xff\xfe garbage")
    return ["predict", str(ws["up_run"]), ws["image"]], ["run.json", "upgrade init"]


def garbage_upgrade_run_json_add(ws):
    (ws["up_run"] / "run.json").write_text('{"format": 1}')
    return ["upgrade", "add", str(ws["up_run"]), ws["image"], "--label", "red"], ["run.json"]


def state_outside_relative(ws):
    other = _other_run(ws)
    state = json.loads((other / "run.json").read_text())["state"]
    _edit_json(ws["up_run"] / "run.json", lambda c: c.update(state=f"../other-run/{state}"))
    return ["predict", str(ws["up_run"]), ws["image"]], ["outside", "run.json"]


def state_outside_absolute(ws):
    other = _other_run(ws)
    state = other / json.loads((other / "run.json").read_text())["state"]
    _edit_json(ws["up_run"] / "run.json", lambda c: c.update(state=str(state)))
    return ["upgrade", "add", str(ws["up_run"]), ws["image"], "--label", "red"], ["outside", "run.json"]


def state_outside_by_symlink(ws):
    other = _other_run(ws)
    state = json.loads((ws["up_run"] / "run.json").read_text())["state"]
    shutil.rmtree(ws["up_run"] / state)
    (ws["up_run"] / state).symlink_to(other / json.loads((other / "run.json").read_text())["state"])
    return ["predict", str(ws["up_run"]), ws["image"]], ["outside"]


def method_outside_by_symlink(ws):
    other = ws["tmp"] / "other-fit"
    shutil.copytree(ws["fit_run"], other)
    shutil.rmtree(ws["fit_run"] / "method")
    (ws["fit_run"] / "method").symlink_to(other / "method")
    return ["eval", str(ws["fit_run"])], ["outside the run folder"]


def upgrade_init_on_a_file(ws):
    (ws["tmp"] / "classes.txt").write_text("red\nblue\n")
    (ws["tmp"] / "notes.txt").write_text("mine")
    return (["upgrade", "init", str(ws["tmp"] / "notes.txt"), "--model", "test-tiny", "--classes",
             str(ws["tmp"] / "classes.txt")], ["notes.txt", "not a folder"])


def upgrade_init_on_a_run(ws):
    (ws["tmp"] / "classes.txt").write_text("red\nblue\n")
    return (["upgrade", "init", str(ws["up_run"]), "--model", "test-tiny", "--classes",
             str(ws["tmp"] / "classes.txt")], ["already holds a run", "--force"])


def adapt_setting_of_wrong_type(ws):
    return (["adapt", "--model", "test-tiny", "--source", ws["folder"], "--target", ws["folder"],
             "--method", "zero-shot", "--set", "logit_scale=abc"], ["logit_scale", "float", "abc"])


def device_upper_case(ws):
    return ["zeroshot", "--model", "test-tiny", "--data", ws["folder"], "--device", "CPU"], ["'CPU'", "--device"]


def fit_args(ws, *extra):
    return ["fit", "linear-probe", "--model", "test-tiny", "--data", ws["folder"], "--shots", "2", "--views", "1",
            *extra]


def negative_seed(ws):
    return fit_args(ws, "--seed", "-5"), ["--seed", "-5"]


def negative_views(ws):
    return ["features", "extract", "--model", "test-tiny", "--data", ws["folder"], "--views", "-3"], ["--views", "-3"]


def zero_shots(ws):
    return fit_args(ws, "--shots", "0"), ["--shots", "0"]


def setting_of_wrong_type(ws):
    argv = ["fit", "tip-adapter", "--model", "test-tiny", "--data", ws["folder"], "--shots", "2", "--views", "1",
            "--set", "alpha=abc"]
    return argv, ["alpha", "float", "abc"]


def unknown_setting(ws):
    return fit_args(ws, "--set", "bogus=1"), ["bogus"]


def device_cuda_without_cuda(ws):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    return ["zeroshot", "--model", "test-tiny", "--data", ws["folder"], "--device", "cuda"], ["cuda", "--device cpu"]


def device_tpu(ws):
    return ["zeroshot", "--model", "test-tiny", "--data", ws["folder"], "--device", "tpu"], ["tpu", "--device"]


def output_in_missing_system_folder(ws):
    return (["zeroshot", "--model", "test-tiny", "--data", ws["folder"], "--output", "/proc/nope/x.json"],
            ["/proc/nope", "--output"])


def output_is_a_folder(ws):
    (ws["tmp"] / "a-folder").mkdir()
    return (["zeroshot", "--model", "test-tiny", "--data", ws["folder"], "--output", str(ws["tmp"] / "a-folder")],
            ["a-folder", "--output"])


def run_dir_is_a_file(ws):
    (ws["tmp"] / "notes.txt").write_text("mine")
    return fit_args(ws, "--run-dir", str(ws["tmp"] / "notes.txt")), ["notes.txt", "--run-dir"]


def run_dir_in_unwritable_place(ws):
    return fit_args(ws, "--run-dir", "/proc/nope/run"), ["/proc", "--run-dir"]


def run_dir_holds_a_run(ws):
    return fit_args(ws, "--run-dir", str(ws["fit_run"])), ["already holds a run", "--force"]


def run_dir_holds_other_files(ws):
    (ws["tmp"] / "mine").mkdir()
    (ws["tmp"] / "mine" / "thesis.tex").write_text("x")
    return fit_args(ws, "--run-dir", str(ws["tmp"] / "mine"), "--force"), ["mine", "not a run"]


def fewshot_empty_shots(ws):
    return (["fewshot", "--model", "test-tiny", "--data", ws["folder"], "--shots", ",",
             "--out", str(ws["tmp"] / "job")], ["--shots", "no values"])


def fewshot_empty_methods(ws):
    return (["fewshot", "--model", "test-tiny", "--data", ws["folder"], "--methods", " , ",
             "--out", str(ws["tmp"] / "job")], ["--methods", "no values"])


def bench_empty_seeds(ws):
    return (["bench", "--model", "test-tiny", "--data", ws["folder"], "--seeds", ",",
             "--out", str(ws["tmp"] / "bench")], ["--seeds", "no values"])


def bench_bad_shots(ws):
    return (["bench", "--model", "test-tiny", "--data", ws["folder"], "--shots", "1,x",
             "--out", str(ws["tmp"] / "bench")], ["--shots", "'1,x'"])


def predict_top_k_zero(ws):
    return ["predict", str(ws["up_run"]), ws["image"], "--top-k", "0"], ["--top-k"]


def decompression_bomb(ws):
    folder = write_colour_folder(ws["tmp"] / "bomb-data", per_class=4)
    bomb_png(folder / "red" / "huge.png")
    return (["zeroshot", "--model", "test-tiny", "--data", str(folder), "--output", str(ws["tmp"] / "out.json")],
            ["huge.png", "pixels", "--skip-corrupt"])


def decompression_bomb_predict(ws):
    bomb = bomb_png(ws["tmp"] / "huge.png")
    return ["predict", str(ws["up_run"]), str(bomb)], ["huge.png", "pixels"]


ROWS = [
    damaged_fit_config, damaged_fit_state, extra_key_fit_config, garbage_fit_run_json, fit_run_json_not_a_record,
    damaged_upgrade_config_predict, damaged_upgrade_state_add, extra_key_upgrade_config_add,
    garbage_upgrade_run_json_predict, garbage_upgrade_run_json_add,
    state_outside_relative, state_outside_absolute, state_outside_by_symlink, method_outside_by_symlink,
    upgrade_init_on_a_file, upgrade_init_on_a_run, adapt_setting_of_wrong_type, device_upper_case,
    negative_seed, negative_views, zero_shots, setting_of_wrong_type, unknown_setting,
    device_cuda_without_cuda, device_tpu, output_in_missing_system_folder, output_is_a_folder,
    run_dir_is_a_file, run_dir_in_unwritable_place, run_dir_holds_a_run, run_dir_holds_other_files,
    fewshot_empty_shots, fewshot_empty_methods, bench_empty_seeds, bench_bad_shots, predict_top_k_zero,
    decompression_bomb, decompression_bomb_predict,
]


def assert_one_line_error(result, words: list[str]) -> str:
    """Exit code 1, one non-empty stderr line holding ``words``, no traceback anywhere."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert isinstance(result.exception, SystemExit), result.exception
    assert len(lines) == 1, lines
    assert "Traceback" not in result.output
    assert lines[0].startswith("error: "), lines[0]
    for word in words:
        assert word in lines[0], (word, lines[0])
    return lines[0]


@pytest.mark.parametrize("prepare", ROWS, ids=[row.__name__ for row in ROWS])
def test_bad_input_is_one_line_and_writes_nothing(prepare, ws):
    argv, words = prepare(ws)
    before = snapshot(ws["tmp"])
    result = runner.invoke(app, argv)
    assert_one_line_error(result, words)
    assert snapshot(ws["tmp"]) == before  # nothing written, nothing half-written, nothing deleted


def test_skip_corrupt_skips_a_bomb(ws, tmp_path):
    folder = write_colour_folder(tmp_path / "bomb-data", per_class=4)
    bomb_png(folder / "red" / "huge.png")
    out = tmp_path / "out.json"
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder), "--split", "all",
                                 "--skip-corrupt", "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["test_size"] == 8  # the bomb is skipped, the 8 real images scored


def test_fit_force_replaces_a_run_whole(ws):
    run = ws["fit_run"]
    (run / "method" / "stray.txt").write_text("from the old run")
    result = runner.invoke(app, [*fit_args(ws, "--seed", "2"), "--run-dir", str(run), "--force"])
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["seed"] == 2
    assert not (run / "method" / "stray.txt").exists()
    assert not [p for p in run.parent.iterdir() if p.name.startswith(".")]  # no temp folder left


def test_fit_that_fails_leaves_no_run_folder(ws, monkeypatch):
    import vlkit.apps.commands as commands

    def broken(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(commands, "run_fewshot", broken)
    run = ws["tmp"] / "new-run"
    result = runner.invoke(app, fit_args(ws, "--run-dir", str(run)))
    assert result.exit_code == 130
    assert not run.exists() and not [p for p in ws["tmp"].iterdir() if p.name.startswith(".")]


# ---- Ctrl-C in the main job -------------------------------------------------------------
def test_ctrl_c_in_fewshot_keeps_the_finished_rows(ws, monkeypatch):
    from vlkit.protocols import runner as bench_runner

    real_run = bench_runner.BenchContext.run
    calls = {"n": 0}

    def interrupt_after_two(self, proto, cell):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return real_run(self, proto, cell)

    monkeypatch.setattr(bench_runner.BenchContext, "run", interrupt_after_two)
    job = ws["tmp"] / "job"
    argv = ["fewshot", "--model", "test-tiny", "--data", ws["folder"], "--methods", "zero-shot,linear-probe",
            "--shots", "1,2", "--out", str(job), "--jobs", "1"]  # in this process, where the patch is
    result = runner.invoke(app, argv)
    assert result.exit_code == 130, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.output
    assert "interrupted" in lines[-1] and "resume" in lines[-1] and "results.json" in lines[-1]
    saved = json.loads((job / "results.json").read_text())
    assert [(r["method"], r["shots"]) for r in saved["rows"]] == [("zero-shot", 1), ("linear-probe", 1)]
    assert "interrupted" in saved["note"] and saved["interrupted"] is True
    assert len((job / "cells.jsonl").read_text().splitlines()) == 2

    monkeypatch.setattr(bench_runner.BenchContext, "run", real_run)  # the re-run resumes: 2 cells left
    result = runner.invoke(app, argv)
    assert result.exit_code == 0, result.output
    saved = json.loads((job / "results.json").read_text())
    assert len(saved["rows"]) == 4 and "interrupted" not in saved


# ---- a one-class folder (the resolver) and a damaged feature shard (the store) ----------
def test_one_class_image_folder_is_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    folder = write_colour_folder(tmp_path / "one", classes=("red",))
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder)])
    assert_one_line_error(result, ["class"])


def test_shard_overwritten_with_same_size_bytes_is_re_encoded(built, tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    args = ["features", "extract", "--model", "test-tiny", "--data", str(built["folder"]), "--split", "all"]
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "a.json")])
    assert first.exit_code == 0, first.output
    shards = sorted((tmp_path / "cache").rglob("shard-*.npy"))
    assert shards
    original = shards[0].read_bytes()
    noise = np.random.default_rng(0).integers(0, 256, len(original) - 128, dtype=np.uint8)
    scrambled = original[:128] + noise.tobytes()  # the .npy header kept, the numbers replaced
    shards[0].write_bytes(scrambled)
    second = runner.invoke(app, [*args, "--output", str(tmp_path / "b.json")])
    assert second.exit_code == 0, second.output
    assert shards[0].read_bytes() == original  # the damaged shard was re-encoded, not served


# ---- option types (the check behind `--set key=value` and every config override) -------
@pytest.mark.parametrize("name, value, ok", [
    ("alpha", 2, True), ("alpha", 2.5, True), ("alpha", np.float64(1.0), True), ("alpha", None, True),
    ("alpha", "abc", False), ("alpha", True, False), ("alpha", [1.0], False),
    ("init_alpha", 1, True), ("init_alpha", None, False),
])
def test_option_types_are_checked(name, value, ok):
    from vlkit.caches.tip_adapter import TipAdapter
    from vlkit.errors import VlkitError

    if ok:
        assert getattr(TipAdapter(**{name: value}).config, name) == value
    else:
        with pytest.raises(VlkitError, match=rf"option {name} takes float.* got {re.escape(repr(value))}"):
            TipAdapter(**{name: value})


def test_every_default_config_passes_its_own_type_check():
    import dataclasses

    from vlkit.methods import list_methods, method_class

    for name in list_methods():
        klass = method_class(name)
        defaults = {f.name: getattr(klass.Config(), f.name) for f in dataclasses.fields(klass.Config)}
        klass(**defaults)  # raises if an annotation and its default disagree
