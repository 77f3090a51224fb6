"""Writing an ONNX model past protobuf's 2 GB limit: the graph in ``FILE``, the weights in ``FILE.<id>.data``.

One protobuf message cannot exceed 2 GiB, so a ViT-L/H image tower with a large cache cannot
be one ``.onnx`` file. Above :data:`EXTERNAL_DATA_ABOVE` bytes of weights the export is two
files: ``model.onnx`` (graph, metadata, and the name of its data file) and
``model.onnx.<12 hex>.data`` (every tensor, ONNX's external-data format), side by side.
onnxruntime and ``onnx.load`` find the data file from the graph; keep the two together.

Written so that a reader never sees a mix: the data file gets a fresh name (nothing refers
to it yet), is fsync'ed, and only then is ``model.onnx`` replaced atomically; the data files
of earlier exports to the same name are deleted after the swap. A crash at any point leaves
the previous export whole (at worst with an orphan data file, removed by the next export).
"""
from __future__ import annotations

import os
import re
import uuid
from pathlib import Path
from typing import Any

from vlkit.io import atomic_file

PROTOBUF_LIMIT = 2**31 - 1  # bytes: the most one protobuf message can hold
EXTERNAL_DATA_ABOVE = 1_800_000_000  # bytes of weights; leaves room for the graph and metadata under the limit


def needs_external_data(weight_bytes: int, above: int | None = None) -> bool:
    """Whether a model holding ``weight_bytes`` of tensors is written with external data."""
    return weight_bytes > (EXTERNAL_DATA_ABOVE if above is None else above)


def data_files(path: Path) -> list[Path]:
    """The external-data files written for ``path`` by this module (current and stale ones)."""
    pattern = re.compile(re.escape(path.name) + r"\.[0-9a-f]{12}\.data$")
    return sorted(p for p in path.parent.glob(f"{path.name}.*.data") if pattern.match(p.name))


def referenced_data(path: Path) -> list[Path]:
    """The data files the model at ``path`` names (empty for a single-file model)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    locations = {entry.value for tensor in _tensors(model) for entry in tensor.external_data if entry.key == "location"}
    return sorted(path.parent / name for name in locations)


def _tensors(model: Any) -> list[Any]:
    from onnx.external_data_helper import _get_all_tensors

    return list(_get_all_tensors(model))


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def save_model(model: Any, path: Path, external: bool) -> list[Path]:
    """Write the ModelProto ``model`` to ``path`` atomically; returns every file written (model first).

    ``external``: the tensors go to a fresh ``<path>.<id>.data`` beside it (see the module docstring).
    """
    import onnx

    path = Path(path)
    data = path.parent / f"{path.name}.{uuid.uuid4().hex[:12]}.data" if external else None
    try:
        with atomic_file(path) as target:
            if data is None:
                onnx.save_model(model, str(target))
            else:
                # location is relative to the model file's folder: the temp file sits beside ``path``
                onnx.save_model(model, str(target), save_as_external_data=True, all_tensors_to_one_file=True,
                                location=data.name, size_threshold=0)
                _fsync(data)  # the weights are durable before the graph naming them appears
    except BaseException:
        if data is not None:
            data.unlink(missing_ok=True)
        raise
    for stale in data_files(path):
        if stale != data:
            stale.unlink(missing_ok=True)
    return [path] + ([data] if data is not None else [])
