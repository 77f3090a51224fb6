"""``vlkit rank``: the table and JSON, cached second runs, and one clear line per bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from vlkit.cli.main import app
from vlkit.errors import ShapeError
from vlkit.features.store import FeatureStore
from vlkit.protocols.ranking import rank_models
from vlkit.ranking import METRICS, compute_metrics

runner = CliRunner()


def write_images(root, colours: dict, per_class: int = 12) -> None:
    rng = np.random.default_rng(0)
    for name, rgb in colours.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = np.clip(np.array(rgb) + rng.normal(0, 25, (16, 16, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{i}.png")


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "imgs", {"red": (200, 30, 30), "blue": (30, 40, 200), "green": (30, 190, 40)})
    return tmp_path / "imgs"


@pytest.fixture()
def checkpoint(tmp_path, tiny_backbone):
    """test-tiny with its image tower perturbed: a second model of the same architecture."""
    torch.manual_seed(0)
    state = {k: v + 0.05 * torch.randn_like(v) if k.startswith("visual.") and v.is_floating_point() else v
             for k, v in tiny_backbone.model.state_dict().items()}
    path = tmp_path / "tiny-perturbed.pt"
    torch.save(state, path)
    return path


def test_rank_prints_the_table_and_writes_json(folder, checkpoint, tmp_path):
    out = tmp_path / "rank.json"
    models = f"test-tiny,test-tiny:{checkpoint}"
    args = ["rank", "--models", models, "--data", str(folder), "--shots", "4", "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "logme" in result.stdout and "mean rank" in result.stdout
    assert "recommendation: " in result.output
    record = json.loads(out.read_text())
    assert [r["model"] for r in record["rows"]] == models.split(",") or len(record["rows"]) == 2
    assert set(record["rankings"]) == set(METRICS) - {"otce"}  # no --source: no OTCE
    for metric, order in record["rankings"].items():
        assert sorted(order) == sorted(models.split(",")), metric
        scores = [next(r for r in record["rows"] if r["model"] == m)["scores"][metric] for m in order]
        assert scores == sorted(scores, reverse=True), metric  # best first
    assert record["recommendation"] in models.split(",")
    assert record["images"] == 12 and record["failures"] == []
    assert all(r["cache"] == "miss" for r in record["rows"])
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    second = json.loads(out.read_text())
    assert all(r["cache"] == "hit" for r in second["rows"])  # the same store: nothing encoded twice
    assert [r["scores"] for r in second["rows"]] == [r["scores"] for r in record["rows"]]


def test_rank_with_a_source_adds_otce(folder, tmp_path, monkeypatch):
    source = tmp_path / "src"
    write_images(source, {"red": (180, 50, 50), "blue": (50, 60, 180), "green": (50, 170, 60)})
    store = FeatureStore(tmp_path / "store")
    result = rank_models(["test-tiny"], str(folder), 4, 1, source=str(source), store=store)
    assert "otce" in result["rankings"]
    assert result["rows"][0]["scores"]["otce"] <= 0.0  # minus a conditional entropy


def test_a_model_that_fails_is_named_in_one_line_and_the_others_ranked(folder, tmp_path):
    out = tmp_path / "rank.json"
    result = runner.invoke(app, ["rank", "--models", "test-tiny,no-such-model", "--data", str(folder),
                                 "--shots", "2", "--output", str(out)])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and errors[0].startswith("error: no-such-model: unknown model 'no-such-model'")
    record = json.loads(out.read_text())
    assert [r["model"] for r in record["rows"]] == ["test-tiny"]
    assert record["recommendation"] == "test-tiny"


def test_a_path_that_is_no_training_run_is_one_line(folder, tmp_path):
    result = runner.invoke(app, ["rank", "--models", f"test-tiny,{tmp_path}", "--data", str(folder), "--shots", "2"])
    assert result.exit_code == 1
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert errors == [f"error: {tmp_path}: a path names a vlkit-mini training run (a folder with vlkit_mini.json); "
                      "for another checkpoint write MODEL:/path/to/checkpoint"]


def test_one_class_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    write_images(tmp_path / "one", {"red": (200, 30, 30)})
    result = runner.invoke(app, ["rank", "--models", "test-tiny", "--data", str(tmp_path / "one"), "--shots", "2"])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "class" in lines[0], result.output


def test_tied_scores_share_a_rank():
    from vlkit.protocols.ranking import _mean_ranks, rankings

    rows = [{"model": m, "scores": {"logme": v, "hscore": 9.0 + e}}
            for m, v, e in (("a", 0.5, 0.0), ("b", 0.7, 3e-13), ("c", 0.1, -2e-13))]
    _mean_ranks(rows, rankings(rows))
    assert [r["ranks"]["logme"] for r in rows] == [2, 1, 3]
    assert [r["ranks"]["hscore"] for r in rows] == [1, 1, 1]  # equal up to rounding: no order
    assert [r["mean_rank"] for r in rows] == [1.5, 1.0, 2.0]


class WiderStore(FeatureStore):
    """A store whose image features are one column wider than the model's (features of another model)."""

    def image_features(self, backbone, dataset, view=0):
        feats = super().image_features(backbone, dataset, view)
        return torch.cat([feats, torch.zeros(len(feats), 1)], dim=1)


def test_features_of_another_width_are_one_line(folder, tmp_path):
    result = rank_models(["test-tiny"], str(folder), 2, 1, store=WiderStore(tmp_path / "store"))
    assert result["rows"] == []
    (failure,) = result["failures"]
    assert "image features are 33-d" in failure["error"] and "\n" not in failure["error"]
    with pytest.raises(ShapeError, match="text weights are 4-d but image features 3-d"):
        compute_metrics(np.ones((4, 3)), [0, 0, 1, 1], np.ones((2, 4)))


def test_bad_models_option_is_one_line(folder):
    result = runner.invoke(app, ["rank", "--models", ",", "--data", str(folder)])
    assert result.exit_code == 1 and "--models" in result.output
    twice = runner.invoke(app, ["rank", "--models", "test-tiny,test-tiny", "--data", str(folder)])
    assert twice.exit_code == 1 and "twice" in twice.output


def test_rank_layers_scores_every_block_from_the_store(folder, tmp_path, tiny_backbone):
    from vlkit.features.layer_features import layer_tokens
    from vlkit.ranking.logme import logme

    out = tmp_path / "layers.json"
    args = ["rank", "--models", "test-tiny", "--layers", "--data", str(folder), "--shots", "4", "--output", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    record = json.loads(out.read_text())
    depth = len(record["rows"]) - 1
    assert [r["model"] for r in record["rows"]] == [f"layer {i}" for i in range(depth)] + ["final"]
    assert set(record["rankings"]) == {"logme", "hscore", "shrinkage_hscore", "gbc", "nleep", "sfda"}
    # the last block's LogME, recomputed here from the tower itself (not through the store)
    from vlkit.data.resolve import load_data
    from vlkit.protocols.ranking import _train_sample

    sample = _train_sample(str(folder), load_data(str(folder), "train"), 4, 1)
    images = torch.stack([tiny_backbone.preprocess(sample.image(i).convert("RGB")) for i in range(len(sample))])
    _, blocks = layer_tokens(tiny_backbone, images)  # (N, depth, 2, W)
    expected = logme(blocks[:, -1].reshape(len(sample), -1).numpy(), np.asarray(sample.labels))
    # the store keeps float16 entries: equal within their rounding
    assert record["rows"][depth - 1]["scores"]["logme"] == pytest.approx(expected, rel=5e-3)
    again = runner.invoke(app, args)
    assert again.exit_code == 0 and json.loads(out.read_text())["rows"][0]["cache"] == "hit"
    two = runner.invoke(app, ["rank", "--models", "test-tiny,test-tiny", "--layers", "--data", str(folder)])
    assert two.exit_code == 2 and "--layers ranks the blocks of one model" in two.output
