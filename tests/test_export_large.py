"""ONNX exports past protobuf's 2 GB limit: the graph in FILE, the weights in FILE.<id>.data beside it.

The code path is the real one with the size threshold lowered to 1 byte (test-tiny's model is
a few hundred KB): written atomically, loaded by onnxruntime directly and by ExportedModel (the
parity check), re-exports leave one data file, and a crash mid-write leaves the previous export.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_export import check_images, fit_on, needs_onnx, parity_tolerance  # noqa: F401 - fixture
from vlkit.apps.export import ExportedModel, export_method
from vlkit.apps.export import onnx_file

pytestmark = needs_onnx


@pytest.fixture(scope="module")
def tip(colour_task):
    return fit_on("tip-adapter", colour_task, None)


def test_external_data_export_loads_everywhere_with_parity(tip, tiny_backbone, check_images, tmp_path):
    import onnx
    import onnxruntime as ort

    images, labels = check_images
    single = export_method(tip, tiny_backbone, tmp_path / "single.onnx")
    report = export_method(tip, tiny_backbone, tmp_path / "big.onnx", check_images=images, check_labels=labels,
                           external_data_above=1)
    out = tmp_path / "big.onnx"
    data = onnx_file.data_files(out)
    assert len(data) == 1 and report["files"] == [str(out), str(data[0])]
    assert onnx_file.referenced_data(out) == data  # the graph names exactly this file
    assert out.stat().st_size < data[0].stat().st_size  # the weights live in the data file
    assert report["bytes"] == out.stat().st_size + data[0].stat().st_size
    assert len(single["files"]) == 1 and not onnx_file.data_files(tmp_path / "single.onnx")
    # the parity check ran through ExportedModel on the two files
    reference = torch.from_numpy(ExportedModel(tmp_path / "single.onnx").logits(images))
    assert report["check"]["max_abs_logit_diff"] <= parity_tolerance(reference)
    assert report["check"]["top1_agreement"] == 100.0
    # onnxruntime on its own, from the model path
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    logits = session.run(None, {"image": images.numpy()})[0]
    np.testing.assert_array_equal(logits, ExportedModel(tmp_path / "single.onnx")(images)[0])
    meta = json.loads(session.get_modelmeta().custom_metadata_map["vlkit"])
    assert meta["external_data"] is True and meta["classnames"] == ["red", "green", "blue", "yellow"]
    assert onnx.load(str(out)).graph.input[0].name == "image"  # onnx.load follows the reference too


def test_reexports_keep_one_data_file_and_int8_works(tip, tiny_backbone, check_images, tmp_path):
    images, _ = check_images
    out = tmp_path / "m.onnx"
    export_method(tip, tiny_backbone, out, external_data_above=1)
    first = onnx_file.data_files(out)
    report = export_method(tip, tiny_backbone, out, int8=True, external_data_above=1)
    second = onnx_file.data_files(out)
    assert len(second) == 1 and second != first  # a fresh name; the earlier export's weights are gone
    plain_int8 = export_method(tip, tiny_backbone, tmp_path / "plain-int8.onnx", int8=True)
    np.testing.assert_array_equal(ExportedModel(out).logits(images), ExportedModel(tmp_path / "plain-int8.onnx")
                                  .logits(images))
    assert report["bytes"] > plain_int8["bytes"] * 0.9  # the same weights, in two files
    export_method(tip, tiny_backbone, out)  # back to one file: no data file left behind
    assert onnx_file.data_files(out) == []
    export_method(tip, tiny_backbone, out, external_data_above=1)
    export_method(tip, tiny_backbone, tmp_path / "m.pt", format="torchscript")
    assert len(onnx_file.data_files(out)) == 1  # another file's name is not touched


def test_a_crash_mid_write_leaves_the_previous_export(tip, tiny_backbone, check_images, tmp_path, monkeypatch):
    images, _ = check_images
    out = tmp_path / "m.onnx"
    export_method(tip, tiny_backbone, out, external_data_above=1)
    before, files = ExportedModel(out).logits(images), sorted(tmp_path.iterdir())

    def crash(_path):
        raise OSError("disk full")

    monkeypatch.setattr(onnx_file, "_fsync", crash)  # after the new data file is written, before the swap
    with pytest.raises(OSError, match="disk full"):
        export_method(tip, tiny_backbone, out, external_data_above=1)
    assert sorted(tmp_path.iterdir()) == files  # no new data file, no temp file
    np.testing.assert_array_equal(ExportedModel(out).logits(images), before)


def test_the_threshold_sits_under_protobufs_limit():
    assert onnx_file.needs_external_data(2**31) and not onnx_file.needs_external_data(100_000_000)
    assert onnx_file.EXTERNAL_DATA_ABOVE < onnx_file.PROTOBUF_LIMIT


def test_the_ladder_walks_to_float32_with_external_data(tip, tiny_backbone, check_images, tmp_path, monkeypatch):
    """With the weights in a data file, every rung (float16's and float32's rewrites too) is written and loaded
    through the external-data path; the last rung's logits are the float32 export's."""
    from vlkit.apps.export import writer

    images, _ = check_images
    monkeypatch.setattr(writer, "SELECT_AGREEMENT", 101.0)  # nothing reaches it: the ladder's last rung
    out = tmp_path / "m.onnx"
    report = export_method(tip, tiny_backbone, out, int8=True, select_images=images[::2], external_data_above=1)
    assert report["int8_rule"]["rule"] == "float32 (no int8)"
    assert [t["rule"] for t in report["int8_rule"]["selected_on"]["tried"]][-2:] == [
        "float16 weights (no int8)", "float32 (no int8)"]
    assert len(onnx_file.data_files(out)) == 1
    single = export_method(tip, tiny_backbone, tmp_path / "single.onnx")
    np.testing.assert_array_equal(ExportedModel(out).logits(images), ExportedModel(tmp_path / "single.onnx")
                                  .logits(images))
