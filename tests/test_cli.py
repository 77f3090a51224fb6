"""The CLI: JSON with accuracy and cost, cache hits, one-line user errors (exit code 1)."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from vlkit.cli.main import app

runner = CliRunner()


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for name, rgb in {"red": (200, 30, 30), "blue": (30, 40, 200)}.items():
        (tmp_path / "imgs" / name).mkdir(parents=True)
        for i in range(8):
            img = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "imgs" / name / f"{i}.png")
    return tmp_path / "imgs"


def test_zeroshot_writes_json_with_cost(folder, tmp_path):
    out = tmp_path / "r.json"
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder), "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    for key in ("top1", "mean_per_class", "trainable_parameters", "artifact_bytes", "fit_seconds",
                "peak_memory_bytes", "latency_ms_per_image"):
        assert key in record
    assert record["test_size"] == 16


def test_features_extract_second_run_hits(folder, tmp_path):
    args = ["features", "extract", "--model", "test-tiny", "--data", str(folder), "--split", "all"]
    first = runner.invoke(app, [*args, "--output", str(tmp_path / "a.json")])
    second = runner.invoke(app, [*args, "--output", str(tmp_path / "b.json")])
    assert first.exit_code == 0 and second.exit_code == 0, first.output + second.output
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b.json").read_text())
    assert a["cache_misses"] == 1 and b["cache_hits"] == 1 and b["cache_misses"] == 0


def test_fit_then_eval_run_dir(folder, tmp_path):
    run = tmp_path / "run"
    fitted = runner.invoke(app, ["fit", "linear-probe", "--model", "test-tiny", "--data", str(folder), "--shots", "2",
                                 "--views", "1", "--run-dir", str(run), "--output", str(tmp_path / "fit.json")])
    assert fitted.exit_code == 0, fitted.output
    evaluated = runner.invoke(app, ["eval", str(run), "--output", str(tmp_path / "eval.json")])
    assert evaluated.exit_code == 0, evaluated.output
    fit_top1 = json.loads((tmp_path / "fit.json").read_text())["top1"]
    assert json.loads((tmp_path / "eval.json").read_text())["top1"] == pytest.approx(fit_top1)


@pytest.mark.parametrize("args, message", [
    (["zeroshot", "--model", "test-tiny", "--data", "/no/such/folder"], "no dataset '/no/such/folder'"),
    (["zeroshot", "--model", "no-model", "--data", "."], "unknown model 'no-model'"),
    (["fit", "no-method", "--data", "."], "unknown method 'no-method'"),
    (["eval", "/no/run"], "not a run folder"),
])
def test_user_errors_are_one_line(args, message, folder):
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_empty_class_and_corrupt_image_errors(folder):
    (folder / "green").mkdir()
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder)])
    assert result.exit_code == 1 and "has no images" in result.output
    (folder / "green" / "bad.png").write_bytes(b"garbage")
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder)])
    assert result.exit_code == 1 and "bad.png" in result.output and "Traceback" not in result.output
    result = runner.invoke(app, ["zeroshot", "--model", "test-tiny", "--data", str(folder), "--skip-corrupt"])
    assert result.exit_code == 1 and "has no images" in result.output or result.exit_code == 0


def test_fit_base_to_novel_reports_base_novel_and_hm_under_one_spelling(folder, tmp_path):
    out = tmp_path / "b2n.json"
    result = runner.invoke(app, ["fit", "coop", "--base-to-novel", "--model", "test-tiny", "--data", str(folder),
                                 "--shots", "2", "--views", "1", "--set", "epochs=1", "--output", str(out)])
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    assert record["base_classes"] == ["blue"] and record["novel_classes"] == ["red"]
    assert record["hm"] == pytest.approx(2 * record["base"] * record["novel"] / (record["base"] + record["novel"]))
    assert record["base"] == record["top1"] and record["settings"] == {"epochs": 1}
    assert not {"base_top1", "novel_top1", "harmonic_mean"} & set(record)
