"""``--int8``'s rule: which weight MatMul/Gemm nodes stay float32, found from node names, honoured by onnxruntime's
quantiser (ONNX) and by the TorchScript path's choice of Linear layers."""
from __future__ import annotations

import numpy as np
import pytest

from test_export import check_images, colour_folder, fit_on, needs_onnx  # noqa: F401 - fixtures
from vlkit.apps.export.int8 import (DEFAULT_RULE, LADDER, TORCHSCRIPT_LADDER, Int8Rule, group_members,
                                    module_node_name, predicted_agreement)
from vlkit.errors import VlkitError

BLOCK = "/encoder/visual/transformer/resblocks.{}/"
NAMES = [BLOCK.format(i) + part for i in range(3)
         for part in ("attn/MatMul", "attn/Gemm", "mlp/c_fc/MatMul", "mlp/c_proj/MatMul")]
NAMES += ["/encoder/visual/MatMul", "/head/MatMul", "/head/head/Gemm"]


@pytest.mark.parametrize("group, expected", [
    ("head", ["/head/MatMul", "/head/head/Gemm"]),
    ("proj", ["/encoder/visual/MatMul"]),
    ("out_proj", [BLOCK.format(i) + "attn/Gemm" for i in range(3)]),
    ("c_proj", [BLOCK.format(i) + "mlp/c_proj/MatMul" for i in range(3)]),
    ("qkv", [BLOCK.format(i) + "attn/MatMul" for i in range(3)]),
    ("last:1", [BLOCK.format(2) + p for p in ("attn/MatMul", "attn/Gemm", "mlp/c_fc/MatMul", "mlp/c_proj/MatMul")]),
    ("first:2", NAMES[:8]),
    ("block:1", NAMES[4:8]),
    ("last:0", []),
])
def test_groups_name_the_nodes_they_say(group, expected):
    assert group_members(group, NAMES) == expected


def test_an_unknown_group_is_refused_in_one_line():
    with pytest.raises(VlkitError, match="unknown int8 group 'mlp'"):
        group_members("mlp", NAMES)


def test_module_names_map_onto_node_names():
    """The TorchScript path applies the same rule to nn.Linear module names."""
    name = module_node_name("encoder.visual.transformer.resblocks.2.mlp.c_fc")
    assert group_members("c_fc", [name]) == [name] and group_members("last:1", [name, *NAMES])[0] == name
    assert group_members("head", [module_node_name("head.adapter.0")]) == ["/head/adapter/0/"]


@needs_onnx
@pytest.mark.parametrize("rule, float_prefixes", [
    (DEFAULT_RULE, ("/head/",)),
    (Int8Rule(keep_float=("head", "proj", "last:1")), ("/head/", "/encoder/visual/MatMul", BLOCK.format(1))),
])
def test_onnx_int8_keeps_exactly_the_rules_nodes_float(rule, float_prefixes, colour_task, tiny_backbone, tmp_path):
    import onnx

    from vlkit.apps.export import export_method
    from vlkit.apps.export.int8 import weight_nodes

    out = tmp_path / "m.onnx"
    report = export_method(fit_on("tip-adapter", colour_task, None), tiny_backbone, out, int8=True, int8_rule=rule)
    graph = onnx.load(str(out)).graph
    still_float = weight_nodes(graph)  # MatMul/Gemm by a constant weight left after quantisation
    integer = [n.name for n in graph.node if n.op_type == "MatMulInteger"]
    assert still_float and all(name.startswith(float_prefixes) for name in still_float)
    assert len(still_float) == report["int8_rule"]["float_nodes"]
    assert len(integer) == report["int8_rule"]["weight_nodes"] - len(still_float) > 0


def test_torchscript_int8_quantises_the_linears_the_rule_leaves(colour_task, tiny_backbone):
    from vlkit.apps.export.graph import classifier_module
    from vlkit.apps.export.writer import quantizable_linears

    module = classifier_module(fit_on("clip-adapter", colour_task, None), tiny_backbone)
    everything = set(quantizable_linears(module, Int8Rule(keep_float=())))
    assert everything and all(name.startswith("encoder.") for name in everything)  # the head's adapter stays float
    kept = everything - set(quantizable_linears(module, Int8Rule(keep_float=("head", "last:1"))))
    assert kept == {name for name in everything if ".resblocks.1." in name}


def test_predicted_agreement_is_every_margin_against_every_change():
    """The formula written out: image i flips under image j's change when margin_i + shrink_j < 0."""
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(40, 5)).astype(np.float32)
    quantised = reference + rng.normal(scale=0.3, size=reference.shape).astype(np.float32)
    margins, shrinks = [], []
    for ref, out in zip(reference, quantised):
        top = int(ref.argmax())
        others = [c for c in range(5) if c != top]
        margins.append(min(ref[top] - ref[c] for c in others))
        shrinks.append(min(0.0, min((out[top] - out[c]) - (ref[top] - ref[c]) for c in others)))
    flips = sum(m + d < 0 for m in margins for d in shrinks) / 40 ** 2
    assert predicted_agreement(reference, quantised) == pytest.approx(100 * (1 - flips), abs=1e-9)
    assert predicted_agreement(reference, reference) == 100.0


def test_a_lucky_draw_of_near_ties_does_not_pass_the_prediction():
    """Half the images sit 0.01 from a tie and happen to be left alone, half are confident and moved by 0.05:
    no flip is observed, yet a near-tie meeting such a change would flip."""
    near = np.tile([[1.0, 0.99, 0.0]], (50, 1))
    confident = np.tile([[10.0, 0.0, 0.0]], (50, 1))
    reference = np.concatenate([near, confident]).astype(np.float32)  # (100, 3)
    quantised = reference.copy()
    quantised[50:, 0] -= 0.05
    assert (quantised.argmax(1) == reference.argmax(1)).all()
    assert predicted_agreement(reference, quantised) == pytest.approx(75.0)  # 50 near-ties x 50 changes of 100^2


@pytest.mark.parametrize("format", ["onnx", "torchscript"])
@pytest.mark.parametrize("target, last", [(0.0, False), (101.0, True)])
def test_int8_takes_the_first_rung_that_agrees_on_the_selection_images(format, target, last, colour_task,
                                                                        tiny_backbone, check_images, tmp_path,
                                                                        monkeypatch):
    """The ladder: full int8 when it agrees enough on the selection images; when nothing does, float32 (both
    formats), after ONNX has tried float16 weights."""
    from vlkit.apps.export import ExportedModel, export_method
    from vlkit.apps.export import writer

    if format == "onnx":
        pytest.importorskip("onnxruntime")
    ladder, suffix = (LADDER, ".onnx") if format == "onnx" else (TORCHSCRIPT_LADDER, ".pt")
    rung = len(ladder) - 1 if last else 0
    images, _ = check_images
    monkeypatch.setattr(writer, "SELECT_AGREEMENT", target)
    method = fit_on("tip-adapter", colour_task, None)
    fp32 = export_method(method, tiny_backbone, tmp_path / f"fp32{suffix}", format=format)
    report = export_method(method, tiny_backbone, tmp_path / f"m{suffix}", format=format, int8=True,
                           select_images=images[::2])
    picked = report["int8_rule"]
    assert picked["rule"] == ladder[rung].label()
    assert picked["selected_on"]["images"] == 50 and len(picked["selected_on"]["tried"]) == rung + 1
    assert all("predicted_agreement_pct" in tried for tried in picked["selected_on"]["tried"])
    assert ExportedModel(tmp_path / f"m{suffix}").metadata["int8_rule"]["rule"] == picked["rule"]
    reference = ExportedModel(tmp_path / f"fp32{suffix}").logits(images)
    exported = ExportedModel(tmp_path / f"m{suffix}").logits(images)
    if last:  # float32 quantises nothing: the float32 export's logits
        assert picked["rule"] == "float32 (no int8)"
        np.testing.assert_allclose(exported, reference, atol=1e-5)
        if format == "onnx":  # float16 weights were tried first and kept top-1 on test-tiny
            assert picked["selected_on"]["tried"][-2] == {**picked["selected_on"]["tried"][-2],
                                                          "rule": "float16 weights (no int8)", "agreement_pct": 100.0}
    else:
        assert report["bytes"] < fp32["bytes"]


def test_float16_rung_halves_the_weights_and_keeps_float32_arithmetic(colour_task, tiny_backbone, check_images,
                                                                       tmp_path):
    """ONNX's float16 rung: weights stored as float16 and cast back, logits within float16 rounding."""
    pytest.importorskip("onnxruntime")
    from vlkit.apps.export import ExportedModel, export_method
    from vlkit.apps.export.int8 import quantize_onnx

    images, _ = check_images
    fp32 = export_method(fit_on("tip-adapter", colour_task, None), tiny_backbone, tmp_path / "fp32.onnx", format="onnx")
    info = quantize_onnx(tmp_path / "fp32.onnx", tmp_path / "half.onnx", Int8Rule(mode="float16"))
    assert info["rule"] == "float16 weights (no int8)" and info["float16_tensors"] > 0
    assert (tmp_path / "half.onnx").stat().st_size < 0.75 * fp32["bytes"]  # test-tiny: the graph is a good part
    np.testing.assert_allclose(ExportedModel(tmp_path / "half.onnx").logits(images),
                               ExportedModel(tmp_path / "fp32.onnx").logits(images), atol=2e-2)


def test_a_rung_needs_the_prediction_as_well_as_the_count(colour_task, tiny_backbone, check_images, tmp_path,
                                                          monkeypatch):
    """Observed agreement alone would take full int8 (target 0 %); a predicted agreement out of reach moves on."""
    from vlkit.apps.export import export_method
    from vlkit.apps.export import writer

    images, _ = check_images
    monkeypatch.setattr(writer, "SELECT_AGREEMENT", 0.0)
    monkeypatch.setattr(writer, "SELECT_PREDICTED", 100.5)
    report = export_method(fit_on("tip-adapter", colour_task, None), tiny_backbone, tmp_path / "m.pt",
                           format="torchscript", int8=True, select_images=images[::2])
    assert report["int8_rule"]["rule"] == TORCHSCRIPT_LADDER[-1].label()
    assert len(report["int8_rule"]["selected_on"]["tried"]) == len(TORCHSCRIPT_LADDER)


@needs_onnx
def test_export_command_chooses_the_int8_rung_on_the_runs_train_images(colour_folder, tmp_path):
    import json

    from typer.testing import CliRunner

    from vlkit.cli.main import app
    from vlkit.data.resolve import load_data

    runner, run = CliRunner(), tmp_path / "run"
    fitted = runner.invoke(app, ["fit", "tip-adapter", "--model", "test-tiny", "--data", str(colour_folder),
                                 "--shots", "2", "--views", "1", "--run-dir", str(run)])
    assert fitted.exit_code == 0, fitted.output
    result = runner.invoke(app, ["export", str(run), "--int8", "--out", str(tmp_path / "m.onnx"),
                                 "-o", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    picked = json.loads((tmp_path / "r.json").read_text())["int8_rule"]
    assert picked["selected_on"]["images"] == len(load_data(str(colour_folder), "train"))  # the train split, not test
    assert picked["rule"] in [rule.label() for rule in LADDER]
    assert "int8: " in result.output and "train images" in result.output
