"""``vlkit export`` (issue 20, item 1): the exported model gives the Python path's logits.

Parity: on 100 test images the exported model's logits equal the Python path's (encode with the
backbone, then ``method.logits``) within 1e-4 of the logit range, ``1e-4 * max(1, max |logit|)``
(float32 carries about 7 digits: GDA's logits on test-tiny's random features reach thousands).
int8: top-1 agrees with the Python path on >= 99 % of vlkit-mini's test images. A method that
cannot be folded is refused in one line. ONNX tests skip without onnxruntime (the export extra);
TorchScript needs only torch. ``tests/test_export_matrix_slow.py`` runs every registered method.
"""
from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from conftest import colour_dataset
from contract_overrides import CONTRACT_OVERRIDES
from vlkit.apps.export import ExportedModel, NotExportableError, export_method
from vlkit.apps.export.heads import NOT_FOLDABLE
from vlkit.apps.export.writer import python_logits
from vlkit.cli.main import app
from vlkit.methods import create_method, method_class

HAS_ORT = importlib.util.find_spec("onnxruntime") is not None and importlib.util.find_spec("onnx") is not None
needs_onnx = pytest.mark.skipif(not HAS_ORT, reason="ONNX export needs the export extra: pip install 'vlkit[export]'")
SUFFIX = {"onnx": ".onnx", "torchscript": ".pt"}
# the default run's subset: the heads with most arithmetic, the layers kept, the image-tower methods
# (tests/test_export_matrix_slow.py runs every registered method in both formats)
FAST_SUBSET = ["ape", "tip-x", "gda", "clip-adapter", "defo", "maple", "lora", "vpt-deep"]
runner = CliRunner()


def parity_tolerance(reference: torch.Tensor) -> float:
    """1e-4 of the logit range (at least 1e-4)."""
    return 1e-4 * max(1.0, float(reference.abs().max()))


def fit_on(name: str, task, adapt_task):
    torch.manual_seed(0)
    target = adapt_task if method_class(name).task_kind == "adaptation" else task
    return create_method(name, **CONTRACT_OVERRIDES.get(name, {})).fit(target)


@pytest.fixture(scope="module")
def check_images(tiny_backbone) -> tuple[torch.Tensor, torch.Tensor]:
    """100 preprocessed colour squares (25 per class) unseen by the fits, and their labels."""
    data = colour_dataset(25, seed=3, name="colours-export")
    return torch.stack([tiny_backbone.preprocess(data.image(i)) for i in range(len(data))]), torch.tensor(data.labels)


def assert_parity(name, colour_task, colour_adapt_task, tiny_backbone, check_images, tmp_path, format):
    """Fit ``name``, export it in ``format``, and compare the exported logits with the Python path's."""
    images, labels = check_images
    method = fit_on(name, colour_task, colour_adapt_task)
    if name in NOT_FOLDABLE:
        with pytest.raises(NotExportableError, match=f"^{name} cannot be exported: ") as caught:
            export_method(method, tiny_backbone, tmp_path / f"m{SUFFIX[format]}", format=format)
        assert "\n" not in str(caught.value)
        return
    reference = python_logits(method, tiny_backbone, images)  # (100, C)
    report = export_method(method, tiny_backbone, tmp_path / f"m{SUFFIX[format]}", format=format,
                           check_images=images, check_labels=labels)
    exported = ExportedModel(report["out"])
    logits, probs = exported(images)
    assert np.abs(logits - reference.numpy()).max() <= parity_tolerance(reference), name
    assert report["check"]["max_abs_logit_diff"] <= parity_tolerance(reference)
    assert report["check"]["top1_agreement"] == 100.0
    np.testing.assert_allclose(probs, torch.softmax(torch.from_numpy(logits), -1).numpy(), atol=1e-6)
    # the batch axis is free: one image gives the same logits as in the batch of 100
    assert np.abs(exported(images[:1])[0] - logits[:1]).max() <= parity_tolerance(reference)
    # exporting does not change the fitted method
    assert torch.equal(python_logits(method, tiny_backbone, images), reference)


@needs_onnx
@pytest.mark.parametrize("name", FAST_SUBSET + sorted(NOT_FOLDABLE))
def test_onnx_logits_equal_the_python_path(name, colour_task, colour_adapt_task, tiny_backbone, check_images,
                                           tmp_path):
    assert_parity(name, colour_task, colour_adapt_task, tiny_backbone, check_images, tmp_path, "onnx")


@pytest.mark.parametrize("name", ["tip-adapter", "lora"])
def test_torchscript_logits_equal_the_python_path(name, colour_task, colour_adapt_task, tiny_backbone,
                                                  check_images, tmp_path):
    assert_parity(name, colour_task, colour_adapt_task, tiny_backbone, check_images, tmp_path, "torchscript")


@needs_onnx
def test_onnx_metadata_names_classes_and_preprocessing(colour_task, tiny_backbone, tmp_path):
    import onnx

    method = fit_on("tip-adapter", colour_task, None)
    export_method(method, tiny_backbone, tmp_path / "m.onnx")
    model = onnx.load(str(tmp_path / "m.onnx"))
    assert [i.name for i in model.graph.input] == ["image"]
    assert [o.name for o in model.graph.output] == ["logits", "probabilities"]
    meta = json.loads({p.key: p.value for p in model.metadata_props}["vlkit"])
    cfg = tiny_backbone.preprocess_cfg
    assert meta["classnames"] == ["red", "green", "blue", "yellow"]
    assert meta["preprocessing"]["size"] == list(cfg.size)
    assert meta["preprocessing"]["mean"] == list(cfg.mean) and meta["preprocessing"]["std"] == list(cfg.std)
    assert meta["preprocessing"]["interpolation"] == cfg.interpolation
    assert meta["method"] == "tip-adapter" and meta["backbone"]["fingerprint"] == tiny_backbone.fingerprint
    assert not meta["int8"]


@needs_onnx
def test_the_graph_holds_no_text_tower(colour_task, tiny_backbone, tmp_path):
    """Feature-level methods: the artifact is the image tower plus the folded head (CoOp's prompts are
    fixed text weights), far smaller than the whole CLIP."""
    method = fit_on("coop", colour_task, None)
    report = export_method(method, tiny_backbone, tmp_path / "m.onnx")
    visual = sum(p.numel() for p in tiny_backbone.model.visual.parameters())
    whole = sum(p.numel() for p in tiny_backbone.model.parameters())
    assert report["bytes"] < 4 * visual + 200_000 < 4 * whole


def test_lora_is_merged_into_plain_linear_layers(colour_task, tiny_backbone):
    from vlkit.apps.export.graph import classifier_module
    from vlkit.methods.tuners.lora import LoRALinear

    method = fit_on("lora", colour_task, None)
    n_lora = len(method.lora_layers())
    assert n_lora > 0
    module = classifier_module(*__import__("copy").deepcopy((method, tiny_backbone)))
    assert not any(isinstance(m, LoRALinear) for m in module.modules())
    assert n_lora == len(method.lora_layers()), "the method handed in was not changed"


# ---- int8: vlkit-mini on Fashion-MNIST, where the logits mean something -----------------------------
@pytest.fixture(scope="module")
def mini_setup(session_store):
    """vlkit-mini, a 4-shot Fashion-MNIST task, and 100 test images (10 per class)."""
    import vlkit
    from vlkit.protocols.fewshot import build_task

    backbone = vlkit.load_backbone("vlkit-mini", device="cpu")
    pool, test = vlkit.load_data("fashion-mnist-mini", "train"), vlkit.load_data("fashion-mnist-mini", "test")
    task = build_task(backbone, pool, shots=4, seed=1, store=session_store, views=0, with_images=True)
    picks = [i for c in range(10) for i in [j for j, y in enumerate(test.labels) if y == c][:10]]
    images = torch.stack([backbone.preprocess(test.image(i).convert("RGB")) for i in picks])
    return backbone, task, images, torch.tensor([test.labels[i] for i in picks])


def assert_int8_agreement(name, mini_setup, tmp_path, format, min_agreement=99.0, select=None, check=None):
    """int8 agrees with the Python path on top-1 (>= ``min_agreement`` %), and flips only near-ties:
    wherever the top-1 differs, the float32 margin between the two classes is below twice the
    largest logit change int8 makes on that image. ``select``: train images to choose the ladder's rung
    on (as ``vlkit export --int8`` does); without them, the default rule. ``check``: (images, labels)
    to measure on instead of the setup's 100 test images."""
    backbone, task, images, labels = mini_setup
    if check is not None:
        images, labels = check
    torch.manual_seed(0)
    method = create_method(name, **CONTRACT_OVERRIDES.get(name, {})).fit(task)
    report = export_method(method, backbone, tmp_path / f"q{SUFFIX[format]}", format=format, int8=True,
                           check_images=images, check_labels=labels, select_images=select)
    fp32 = export_method(method, backbone, tmp_path / f"f{SUFFIX[format]}", format=format)
    reference = python_logits(method, backbone, images).numpy()  # (100, C)
    quantized = ExportedModel(report["out"]).logits(images)
    assert report["check"]["top1_agreement"] >= min_agreement, (report["check"], report.get("int8_rule"))
    rows = np.arange(len(reference))
    ref_top, q_top = reference.argmax(-1), quantized.argmax(-1)
    margin = reference[rows, ref_top] - reference[rows, q_top]  # (100,) 0 where they agree
    change = np.abs(quantized - reference).max(-1)
    assert (margin[ref_top != q_top] <= 2 * change[ref_top != q_top]).all(), "int8 flipped a confident prediction"
    if report.get("int8_rule", {}).get("rule") != "float32 (no int8)":
        assert report["bytes"] < fp32["bytes"], "int8 (or float16) weights make the artifact smaller"
    assert ExportedModel(report["out"]).metadata["int8"] is True


@needs_onnx
def test_onnx_int8_agrees_on_top1(mini_setup, tmp_path):
    assert_int8_agreement("tip-adapter", mini_setup, tmp_path, "onnx")


def test_torchscript_int8_agrees_on_top1(mini_setup, tmp_path):
    assert_int8_agreement("linear-probe", mini_setup, tmp_path, "torchscript")


# ---- the command ------------------------------------------------------------------------------------
@pytest.fixture()
def colour_folder(tmp_path, monkeypatch):
    """A tiny ImageFolder with train/test splits of two colours, and a private feature cache."""
    from PIL import Image

    monkeypatch.setenv("VLKIT_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("test", 5)):
        for name, rgb in {"red": (200, 30, 30), "blue": (30, 40, 200)}.items():
            (tmp_path / "imgs" / split / name).mkdir(parents=True)
            for i in range(count):
                img = np.clip(np.array(rgb) + rng.normal(0, 20, (16, 16, 3)), 0, 255).astype(np.uint8)
                Image.fromarray(img).save(tmp_path / "imgs" / split / name / f"{i}.png")
    return tmp_path / "imgs"


@needs_onnx
def test_export_command_writes_a_checked_model(colour_folder, tmp_path):
    run = tmp_path / "run"
    fitted = runner.invoke(app, ["fit", "tip-adapter", "--model", "test-tiny", "--data", str(colour_folder),
                                 "--shots", "2", "--views", "1", "--run-dir", str(run)])
    assert fitted.exit_code == 0, fitted.output
    result = runner.invoke(app, ["export", str(run), "--out", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["check"]["images"] == 10 and report["check"]["top1_agreement"] == 100.0
    assert report["check"]["max_abs_logit_diff"] < 1e-3
    assert ExportedModel(tmp_path / "m.onnx").classnames == ["blue", "red"]


@pytest.mark.parametrize("args, message", [
    (["--format", "tflite", "--out", "m.tflite"], "unknown export format 'tflite': use onnx or torchscript"),
    (["--format", "torchscript", "--out", "m.onnx"], "a TorchScript model ends in .pt, not .onnx"),
    (["--out", "m.pt"], "an ONNX model's file name ends in .onnx"),
])
def test_export_command_refuses_bad_options_in_one_line(args, message, tmp_path):
    if "onnx" in message and "TorchScript" not in message and not HAS_ORT:
        pytest.skip("ONNX export needs the export extra: pip install 'vlkit[export]'")
    result = runner.invoke(app, ["export", str(tmp_path), *[a if not a.startswith("m.") else str(tmp_path / a)
                                                            for a in args]])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output


def test_export_command_refuses_a_folder_that_is_not_a_run(tmp_path):
    result = runner.invoke(app, ["export", str(tmp_path / "nothing"), "--format", "torchscript",
                                 "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1
    assert "is not a run folder" in result.output and len(result.output.strip().splitlines()) == 1


def test_export_command_says_why_cocoop_cannot_be_exported(colour_folder, tmp_path):
    run = tmp_path / "run"
    fitted = runner.invoke(app, ["fit", "cocoop", "--model", "test-tiny", "--data", str(colour_folder), "--shots",
                                 "2", "--views", "1", "--set", "epochs=1", "--run-dir", str(run)])
    assert fitted.exit_code == 0, fitted.output
    result = runner.invoke(app, ["export", str(run), "--format", "torchscript", "--out", str(tmp_path / "m.pt")])
    assert result.exit_code == 1
    assert result.output.strip() == f"error: cocoop cannot be exported: {NOT_FOLDABLE['cocoop']}"
    assert not (tmp_path / "m.pt").exists()


def test_an_upgrade_run_exports_its_cache(tiny_backbone, tmp_path):
    """A `vlkit upgrade` run: the exported model gives the run's own predictions."""
    from vlkit.apps import upgrade

    run = tmp_path / "shop"
    upgrade.init_run(run, "test-tiny", ["red", "blue"], backbone=tiny_backbone)
    images = colour_dataset(3, seed=4)
    feats = tiny_backbone.encode_pil([images.image(i) for i in range(3)])
    upgrade.add_features(run, feats, "red", tiny_backbone.fingerprint)
    from vlkit.apps.export import export_run

    report = export_run(run, format="torchscript", out=tmp_path / "shop.pt")
    assert report["check_data"] is None and "check" not in report
    method = upgrade.load_method(run)
    batch = torch.stack([tiny_backbone.preprocess(images.image(i)) for i in range(len(images))])
    reference = python_logits(method, tiny_backbone, batch)
    exported = ExportedModel(tmp_path / "shop.pt")(batch)[0]
    assert np.abs(exported - reference.numpy()).max() <= parity_tolerance(reference)
    assert ExportedModel(tmp_path / "shop.pt").classnames == ["red", "blue"]
