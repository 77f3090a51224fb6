"""The zero-to-few-shot upgrade run: library and CLI, atomic state, clear errors that change nothing."""
from __future__ import annotations

import inspect
import json

import numpy as np
import pytest
import torch
import typer
from PIL import Image
from typer.testing import CliRunner

from vlkit.cli.upgrade_commands import predict_command, upgrade_app
from conftest import COLOURS
from vlkit.apps import upgrade
from vlkit.errors import BackboneMismatchError, DataError, VlkitError

CLASSES = list(COLOURS)


def write_images(folder, name, count, seed=0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        img = np.clip(np.array(COLOURS[name])[None, None] + rng.normal(0, 20, (32, 32, 3)), 0, 255)
        path = folder / f"{name}-{seed}-{i}.png"
        Image.fromarray(img.astype(np.uint8)).save(path)
        paths.append(path)
    return paths


def snapshot(run):
    """Every file's bytes under the run (to prove a failed request changed nothing)."""
    files = [p for p in sorted(run.rglob("*")) if p.is_file() and p.name != ".lock"]
    return {str(p.relative_to(run)): p.read_bytes() for p in files}


def test_library_round_trip_and_atomic_state(tmp_path, tiny_backbone):
    run = tmp_path / "run"
    info = upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    assert info["examples"] == 0 and info["embed_dim"] == tiny_backbone.embed_dim
    images = write_images(tmp_path / "img", "red", 3)
    before = upgrade.predict_images(run, images, top_k=2, backbone=tiny_backbone)
    assert len(before["predictions"]) == 3 and len(before["predictions"][0]["top"]) == 2
    # zero-shot start: the probabilities are CLIP's softmax(s f W^T), s the backbone's logit scale
    feats = upgrade.encode_images(tiny_backbone, images)
    method = upgrade.load_method(run)
    expected = torch.softmax(tiny_backbone.logit_scale * torch.nn.functional.normalize(feats, dim=-1) @ method.text_weights_.T, -1)
    assert before["predictions"][0]["top"][0]["probability"] == pytest.approx(float(expected[0].max()), rel=1e-5)
    added = upgrade.add_images(run, images[:2], "red", backbone=tiny_backbone)
    assert added["added"] == 2 and added["per_class"]["red"] == 2 and added["examples"] == 2
    states = sorted(p.name for p in run.glob("state-*"))
    assert states == [upgrade.read_meta(run)["state"]]  # the old state folder is gone
    assert upgrade.load_method(run).cache_size == 2
    after = upgrade.predict_images(run, images, top_k=1, backbone=tiny_backbone)
    assert after["examples"] == 2 and after["seconds_per_image"] < 1.0


def test_bad_requests_leave_the_run_unchanged(tmp_path, tiny_backbone):
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    good = write_images(tmp_path / "img", "blue", 2)
    upgrade.add_images(run, good, "blue", backbone=tiny_backbone)
    state = snapshot(run)
    with pytest.raises(VlkitError, match="unknown label 'purple'.*red, green, blue, yellow"):
        upgrade.add_images(run, good, "purple", backbone=tiny_backbone)
    corrupt = tmp_path / "img" / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="corrupt.png"):
        upgrade.add_images(run, [good[0], corrupt], "blue", backbone=tiny_backbone)
    with pytest.raises(BackboneMismatchError, match="another backbone"):
        upgrade.add_features(run, torch.randn(2, tiny_backbone.embed_dim + 1), "blue")
    with pytest.raises(BackboneMismatchError, match="encode the images with the run's model"):
        upgrade.add_features(run, torch.randn(2, tiny_backbone.embed_dim), "blue", fingerprint="other-model-abc")

    class Retrained:  # the same architecture with other weights
        fingerprint = "test-tiny-retrained"

    with pytest.raises(BackboneMismatchError, match="weights changed"):
        upgrade.predict_images(run, good, backbone=Retrained())
    with pytest.raises(VlkitError, match="already holds a run"):
        upgrade.init_run(run, "test-tiny", CLASSES, backbone=tiny_backbone)
    assert snapshot(run) == state
    with pytest.raises(VlkitError, match="not an upgrade run"):
        upgrade.add_images(tmp_path / "nowhere", good, "blue", backbone=tiny_backbone)
    assert not (tmp_path / "nowhere").exists()


def test_read_classes(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# fashion\nshirt\n\ncoat  # outerwear\n")
    assert upgrade.read_classes(path) == ["shirt", "coat"]
    path.write_text("shirt\nshirt\n")
    with pytest.raises(DataError, match="more than once"):
        upgrade.read_classes(path)
    with pytest.raises(DataError, match="not found"):
        upgrade.read_classes(tmp_path / "missing.txt")


def test_cli_init_add_predict(tmp_path):
    from vlkit.cli.main import app  # the real `vlkit` app, which wires upgrade/predict

    runner = CliRunner()
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES))
    run = tmp_path / "run"
    result = runner.invoke(app, ["upgrade", "init", str(run), "--model", "test-tiny", "--classes", str(classes),
                                 "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["classes"] == 4
    images = write_images(tmp_path / "img", "green", 2)
    result = runner.invoke(app, ["upgrade", "add", str(run), *map(str, images), "--label", "green"])
    assert result.exit_code == 0, result.output
    assert "green" in result.output
    out = tmp_path / "pred.json"
    result = runner.invoke(app, ["predict", str(run), str(images[0]), "--top-k", "3", "--output", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert len(saved["predictions"][0]["top"]) == 3 and saved["examples"] == 2
    result = runner.invoke(app, ["upgrade", "add", str(run), str(images[0]), "--label", "nope"])
    assert result.exit_code == 1 and "unknown label 'nope'" in result.output  # one line, no traceback
    assert "Traceback" not in result.output


def test_commands_are_plain_typer_functions():
    app = typer.Typer()
    app.add_typer(upgrade_app, name="upgrade")
    app.command("predict")(predict_command)
    result = CliRunner().invoke(app, ["upgrade", "--help"])
    assert result.exit_code == 0 and "init" in result.output and "add" in result.output



def test_cli_output_is_the_shared_option_written_atomically(tmp_path):
    from vlkit.cli import common
    from vlkit.cli.main import app
    from vlkit.cli.upgrade_commands import add_command, init_command

    for command in (init_command, add_command, predict_command):
        defaults = {name: p.default for name, p in inspect.signature(command).parameters.items()}
        assert defaults["output"] is common.OutputOpt and defaults["device"] is common.DeviceOpt
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(CLASSES))
    out = tmp_path / "new" / "init.json"  # the folder is created
    result = CliRunner().invoke(app, ["upgrade", "init", str(tmp_path / "run"), "-m", "test-tiny", "--classes",
                                      str(classes), "-o", str(out)])
    assert result.exit_code == 0, result.output
    saved = json.loads(out.read_text())
    assert saved["classes"] == 4 and saved["model"] == "test-tiny"
    assert out.read_text() == json.dumps(saved, indent=1)  # the format the command always wrote
    assert [p.name for p in out.parent.iterdir()] == ["init.json"]  # no temp file left

@pytest.mark.parametrize("retune", [True, False])
def test_alpha_beta_retuned_once_every_class_has_enough_examples(tmp_path, tiny_backbone, retune):
    run = tmp_path / "run"
    upgrade.init_run(run, "test-tiny", CLASSES[:2], backbone=tiny_backbone, retune=retune, retune_min=2)
    d = tiny_backbone.embed_dim
    g = torch.Generator().manual_seed(0)
    first = upgrade.add_features(run, torch.randn(2, d, generator=g), CLASSES[0])
    assert not first["retuned"] and (first["alpha"], first["beta"]) == (upgrade.DEFAULT_ALPHA, upgrade.DEFAULT_BETA)
    second = upgrade.add_features(run, torch.randn(2, d, generator=g), CLASSES[1])
    assert second["retuned"] is retune
    method = upgrade.load_method(run)
    assert (method.alpha_, method.beta_) == (second["alpha"], second["beta"])
    assert upgrade.read_meta(run)["history"][-1]["retuned"] is retune
