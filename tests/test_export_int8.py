"""``--int8``'s rule: which weight MatMul/Gemm nodes stay float32, found from node names, honoured by onnxruntime's
quantiser (ONNX) and by the TorchScript path's choice of Linear layers."""
from __future__ import annotations

import pytest

from test_export import check_images, colour_folder, fit_on, needs_onnx  # noqa: F401 - fixtures
from vlkit.apps.export.int8 import DEFAULT_RULE, LADDER, Int8Rule, group_members, module_node_name
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


@needs_onnx
@pytest.mark.parametrize("target, rung", [(0.0, 0), (101.0, 2)])
def test_int8_takes_the_first_rung_that_agrees_on_the_selection_images(target, rung, colour_task, tiny_backbone,
                                                                        check_images, tmp_path, monkeypatch):
    """The ladder: full int8 when it agrees enough on the selection images, float16 weights when nothing does."""
    import numpy as np

    from vlkit.apps.export import ExportedModel, export_method
    from vlkit.apps.export import int8 as int8_module
    from vlkit.apps.export import writer

    images, _ = check_images
    monkeypatch.setattr(writer, "SELECT_AGREEMENT", target)
    method = fit_on("tip-adapter", colour_task, None)
    fp32 = export_method(method, tiny_backbone, tmp_path / "fp32.onnx")
    report = export_method(method, tiny_backbone, tmp_path / "m.onnx", int8=True, select_images=images[::2])
    picked = report["int8_rule"]
    assert picked["rule"] == int8_module.LADDER[rung].label()
    assert picked["selected_on"]["images"] == 50 and len(picked["selected_on"]["tried"]) == rung + 1
    assert ExportedModel(tmp_path / "m.onnx").metadata["int8_rule"]["rule"] == picked["rule"]
    if rung == 2:  # float16 weights: half the weight bytes, logits within float16 rounding of float32
        assert report["bytes"] < 0.75 * fp32["bytes"]  # test-tiny: the graph itself is a good part of the file
        reference = ExportedModel(tmp_path / "fp32.onnx").logits(images)
        np.testing.assert_allclose(ExportedModel(tmp_path / "m.onnx").logits(images), reference, atol=2e-2)
        assert picked["selected_on"]["tried"][-1]["agreement_pct"] == 100.0


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
