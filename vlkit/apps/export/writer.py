"""Write one self-contained model (ONNX or TorchScript, optionally int8) from a fitted method.

:func:`export_method` traces :func:`~vlkit.apps.export.graph.classifier_module` once and
writes it atomically with its metadata (class names, preprocessing, method, backbone).
ONNX uses ``torch.onnx.export``'s TorchScript-based exporter (``dynamo=False``: the
dynamo exporter needs onnxscript, which vlkit does not depend on) at opset 17, with a
dynamic batch axis; ``int8`` is onnxruntime's dynamic quantisation (int8 weights of the
MatMul/Gemm ops, activations quantised at run time), as far as :data:`~vlkit.apps.export.int8.LADDER`
allows on selection (train) images; past protobuf's 2 GB the weights go to a ``.data`` file (:mod:`.onnx_file`). TorchScript is ``torch.jit.trace``;
``int8`` is ``torch.ao.quantization.quantize_dynamic`` of the plain ``nn.Linear`` layers first, as far as
:data:`~vlkit.apps.export.int8.TORCHSCRIPT_LADDER` allows on selection images.
With check images, the exported model is run on them and compared with the Python path
(the method's own ``logits``): largest logit difference, top-1 agreement, accuracy of both.
"""
from __future__ import annotations

import contextlib
import copy
import json
import tempfile
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from torch import nn

from vlkit.apps.export.graph import classifier_module, check_exportable
from vlkit.apps.export.int8 import (DEFAULT_RULE, LADDER, SELECT_AGREEMENT, SELECT_PREDICTED, TORCHSCRIPT_LADDER,
                                    Int8Rule, group_members, module_node_name, predicted_agreement, quantize_onnx)
from vlkit.apps.export.onnx_file import data_files, needs_external_data, save_model
from vlkit.apps.export.runtime import METADATA_KEY, TORCHSCRIPT_EXTRA, ExportedModel, require_onnx
from vlkit.errors import VlkitError
from vlkit.io import atomic_file

FORMATS = ("onnx", "torchscript")
OPSET = 17


def check_format(format: str, out: str | Path) -> Path:
    """The output path, after refusing an unknown format or a file name that does not fit it."""
    if format not in FORMATS:
        raise VlkitError(f"unknown export format {format!r}: use onnx or torchscript")
    out = Path(out)
    if format == "onnx" and out.suffix != ".onnx":
        raise VlkitError(f"--out {out}: an ONNX model's file name ends in .onnx")
    if format == "torchscript" and out.suffix == ".onnx":
        raise VlkitError(f"--out {out}: a TorchScript model ends in .pt, not .onnx (or pass --format onnx)")
    if out.is_dir():
        raise VlkitError(f"--out {out} is a folder: name the model file to write")
    if format == "onnx":
        require_onnx()
    return out


def preprocessing_of(backbone: Any) -> dict[str, Any]:
    """The input the model expects: open_clip's evaluation transform on the backbone's config."""
    cfg = asdict(backbone.preprocess_cfg)
    height, width = cfg["size"]
    return {**cfg, "size": [height, width],
            "input": f"float32 (N, 3, {height}, {width}): the image converted to {cfg['mode']}, resized with "
                     f"{cfg['interpolation']} interpolation (resize_mode {cfg['resize_mode']!r}: 'shortest' scales "
                     "the shorter side to the size then centre-crops, 'squash' resizes to the size, 'longest' scales "
                     "the longer side and pads with fill_color), scaled to [0, 1], then (x - mean) / std per channel",
            "transform": "open_clip.transform.image_transform_v2(PreprocessCfg(**this), is_train=False)"}


def metadata_of(method: Any, backbone: Any, format: str, int8: bool) -> dict[str, Any]:
    """What the exported file carries besides the graph."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        vlkit_version = version("vlkit")
    except PackageNotFoundError:  # a source tree on sys.path without an install
        vlkit_version = None
    return {"classnames": list(method.classnames_), "method": method.name, "family": method.family,
            "paper": method.paper, "format": format, "int8": int8, "vlkit_version": vlkit_version,
            "backbone": {"model": backbone.name, "pretrained": backbone.pretrained,
                         "fingerprint": backbone.fingerprint, "embed_dim": backbone.embed_dim},
            "preprocessing": preprocessing_of(backbone),
            "inputs": {"image": "(N, 3, H, W) float32, preprocessed as 'preprocessing' says"},
            "outputs": {"logits": "(N, C) float32 class logits, C = len(classnames)",
                        "probabilities": "(N, C) float32 softmax of the logits"}}


def python_logits(method: Any, backbone: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """(N, C) logits of the Python path: encode with the backbone (feature-level) then ``method.logits``."""
    out = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size]
            x = batch if method.input_kind == "images" else backbone.encode_images(batch).cpu()
            out.append(method.logits(x).float().cpu())
    return torch.cat(out) if out else torch.zeros(0, len(method.classnames_))


@contextlib.contextmanager
def _plain_attention() -> Iterator[None]:
    """Trace ``nn.MultiheadAttention`` through its plain ops, not its fused inference kernel
    (``_native_multi_head_attention`` has no ONNX form and would pin the trace to that kernel)."""
    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


def _onnx_export(module: nn.Module, dummy: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings(), _plain_attention():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
        torch.onnx.export(module, (dummy,), str(path), input_names=["image"], output_names=["logits", "probabilities"],
                          dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}, "probabilities": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)


def _weight_bytes(model: Any) -> int:
    """Bytes of the tensors an ONNX ModelProto holds (initializers and Constant nodes), loaded in memory."""
    tensors = list(model.graph.initializer)
    tensors += [attr.t for node in model.graph.node if node.op_type == "Constant" for attr in node.attribute
                if attr.HasField("t")]
    return sum(len(t.raw_data) for t in tensors)


def _onnx_with_metadata(source: Path, path: Path, metadata: dict[str, Any],
                        external_above: int | None = None) -> list[Path]:
    """Write ``source`` with the vlkit metadata to ``path`` (atomically; external data past the size limit)."""
    import onnx

    model = onnx.load(str(source))  # its external data (a source past 2 GB) is read in too
    del model.metadata_props[:]
    external = needs_external_data(_weight_bytes(model), external_above)
    metadata = {**metadata, "external_data": external}
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(metadata)})
    model.doc_string = (f"vlkit {metadata['method']} on {metadata['backbone']['model']}: image (N, 3, H, W) -> "
                        f"logits, probabilities (N, {len(metadata['classnames'])}); metadata_props['vlkit'] holds "
                        "the class names and preprocessing"
                        + ("; the weights are in the .data file beside this one (keep them together)" if external
                           else ""))
    return save_model(model, path, external)


def quantizable_linears(module: nn.Module, rule: Int8Rule = DEFAULT_RULE) -> dict[str, Any]:
    """``quantize_dynamic``'s spec: every plain ``nn.Linear`` of the image tower, int8 per output channel,
    less those ``rule`` keeps float (the ONNX groups, matched on the module paths).

    The head stays float32 (as in the ONNX int8 model). Layers inside a tuner's own modules (adapters'
    bottlenecks, LoRA wrappers) stay float too: those modules read ``weight.dtype`` of their linear
    layers, which a quantised layer turns into a method; they hold a small share of the weights.
    (The attention projections are not plain Linears here: only the MLPs' are quantised.)
    """
    tuner_parts = [name + "." for name, m in module.named_modules()
                   if name and type(m).__module__.startswith("vlkit.methods.tuners")]
    qconfig = torch.ao.quantization.per_channel_dynamic_qconfig
    names = [name for name, m in module.named_modules() if type(m) is nn.Linear and name.startswith("encoder.")
             and not any(name.startswith(part) for part in tuner_parts)]
    scoped = {module_node_name(name): name for name in names}
    kept = {n for group in rule.keep_float for n in group_members(group, list(scoped))}
    return {name: qconfig for scope, name in scoped.items() if scope not in kept}


def _torchscript(module: nn.Module, dummy: torch.Tensor, int8: bool, path: Path, metadata: dict[str, Any],
                 rule: Int8Rule = DEFAULT_RULE) -> None:
    with warnings.catch_warnings(), torch.no_grad(), _plain_attention():
        warnings.simplefilter("ignore")  # torch.ao's deprecation; tracer warnings on Python values (fixed shapes)
        if int8:
            spec = quantizable_linears(module, rule)
            module = torch.ao.quantization.quantize_dynamic(module, spec, dtype=torch.qint8, inplace=True)
        traced = torch.jit.trace(module, (dummy,), check_trace=False)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def export_method(method: Any, backbone: Any, out: str | Path, format: str = "onnx", int8: bool = False,
                  check_images: torch.Tensor | None = None, check_labels: Any = None,
                  owned: bool = False, int8_rule: Int8Rule | None = None,
                  external_data_above: int | None = None, select_images: torch.Tensor | None = None) -> dict[str, Any]:
    """Write the fitted ``method`` on ``backbone`` to ``out`` as one model; returns a JSON-ready report.

    ``check_images`` (N, 3, H, W) preprocessed (and optional ``check_labels`` (N,)): run the
    exported model on them and compare with the Python path (``check`` in the report).
    ``owned``: the caller hands over ``method`` and ``backbone`` (loaded for this export), so they
    may be changed in place; otherwise they are copied when the export would change them.
    ``int8_rule``: which nodes (ONNX) or linear layers (TorchScript) stay float32 with ``int8``. Without it,
    ``int8`` with ``select_images`` (N, 3, H, W) preprocessed images that are not test images (the run's train
    split) writes the first rung of :data:`~vlkit.apps.export.int8.LADDER` (TorchScript:
    ``TORCHSCRIPT_LADDER``) that keeps top-1 on them (:func:`_select_rung`); with neither, :data:`DEFAULT_RULE`.
    ``external_data_above``: ONNX weights over this many bytes go to a ``.data`` file beside ``out``
    (default :data:`~vlkit.apps.export.onnx_file.EXTERNAL_DATA_ABOVE`, under protobuf's 2 GB limit).
    """
    out = check_format(format, out)
    method._check_fitted()
    check_exportable(method)
    if backbone.device.type != "cpu":
        raise VlkitError(f"export traces on the CPU: load the backbone with device='cpu' (got {backbone.device.type})")
    reference = python_logits(method, backbone, check_images) if check_images is not None else None
    if not owned and (method.input_kind == "images" or (int8 and format == "torchscript")):
        method, backbone = copy.deepcopy((method, backbone))  # one memo: the method's backbone_ stays the backbone
    module = classifier_module(method, backbone).float().eval()
    height, width = backbone.preprocess_cfg.size
    dummy = torch.zeros(2, 3, height, width)
    metadata = metadata_of(method, backbone, format, int8)
    quantised: dict[str, Any] = {}
    written = [out]
    choose = int8 and int8_rule is None and select_images is not None and len(select_images) > 0  # walk a ladder
    with tempfile.TemporaryDirectory(prefix="vlkit-export-") as tmp:
        if format == "onnx":
            fp32 = Path(tmp) / "fp32.onnx"
            _onnx_export(module, dummy, fp32)  # torch.onnx writes external data itself past 2 GB
            source = fp32
            if int8:
                big = needs_external_data(sum(t.numel() * t.element_size() for t in module.state_dict().values()),
                                          external_data_above)
                if choose:
                    def write(rule: Int8Rule, path: Path) -> dict[str, Any]:
                        return quantize_onnx(fp32, path, rule, external=big)

                    source, quantised = _select_rung(write, ExportedModel(fp32).logits(select_images), LADDER,
                                                     Path(tmp), select_images, ".onnx")
                else:
                    source = Path(tmp) / "int8.onnx"
                    quantised = quantize_onnx(fp32, source, int8_rule or DEFAULT_RULE, external=big)
                metadata["int8_rule"] = quantised
            written = _onnx_with_metadata(source, out, metadata, external_data_above)
        else:
            if choose:
                with torch.no_grad(), _plain_attention():
                    float_logits = torch.cat([module(select_images[i:i + 256])[0]
                                              for i in range(0, len(select_images), 256)])  # (N, C)

                def write(rule: Int8Rule, path: Path) -> dict[str, Any]:
                    _torchscript(copy.deepcopy(module), dummy, rule.mode != "float32", path, metadata, rule)
                    return {"rule": rule.label(), "linear_layers_int8": len(quantizable_linears(module, rule))
                            if rule.mode != "float32" else 0}

                source, quantised = _select_rung(write, float_logits.numpy(), TORCHSCRIPT_LADDER, Path(tmp),
                                                 select_images, ".pt")
                metadata["int8_rule"] = quantised
                with atomic_file(out) as target:  # the chosen file again, with what was tried in its metadata
                    _resave_torchscript(source, target, metadata)
            else:
                with atomic_file(out) as target:
                    _torchscript(module, dummy, int8, target, metadata, int8_rule or DEFAULT_RULE)
            for stale in data_files(out):  # an earlier ONNX export's weights under this name
                stale.unlink(missing_ok=True)
    report = {"out": str(out), "format": format, "int8": int8, "bytes": sum(f.stat().st_size for f in written),
              "files": [str(f) for f in written], "method": method.name, "classes": len(method.classnames_),
              "model": backbone.name}
    if quantised:
        report["int8_rule"] = quantised
    if reference is not None:
        report["check"] = compare(reference, ExportedModel(out).logits(check_images), check_labels)
    return report


def _select_rung(write: Callable[[Int8Rule, Path], dict[str, Any]], reference: np.ndarray,
                 ladder: tuple[Int8Rule, ...], tmp: Path, images: torch.Tensor,
                 suffix: str) -> tuple[Path, dict[str, Any]]:
    """The first rung of ``ladder`` whose model (``write(rule, path)`` writes it) keeps top-1 on ``images``:
    observed agreement with the float32 ``reference`` logits (N, C) of at least ``SELECT_AGREEMENT`` % and
    :func:`~vlkit.apps.export.int8.predicted_agreement` of at least ``SELECT_PREDICTED`` % (else the last
    rung). Returns its file and what was tried."""
    top = reference.argmax(-1)
    tried = []
    for rung, rule in enumerate(ladder):
        path = tmp / f"int8-{rung}{suffix}"
        found = write(rule, path)
        logits = ExportedModel(path).logits(images)
        agreement = 100.0 * float((logits.argmax(-1) == top).mean())
        predicted = predicted_agreement(reference, logits)
        tried.append({"rule": found["rule"], "agreement_pct": round(agreement, 2),
                      "predicted_agreement_pct": round(predicted, 2)})
        if (agreement >= SELECT_AGREEMENT and predicted >= SELECT_PREDICTED) or rung == len(ladder) - 1:
            return path, {**found, "selected_on": {"images": int(len(images)), "min_agreement_pct": SELECT_AGREEMENT,
                                                   "min_predicted_agreement_pct": SELECT_PREDICTED, "tried": tried}}
    raise AssertionError("unreachable: the last rung is always taken")


def _resave_torchscript(source: Path, target: Path, metadata: dict[str, Any]) -> None:
    """Write the TorchScript model at ``source`` to ``target`` with ``metadata`` as its extra file."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notices
        module = torch.jit.load(str(source), map_location="cpu")
        torch.jit.save(module, str(target), _extra_files={TORCHSCRIPT_EXTRA: json.dumps(metadata)})


def compare(reference: torch.Tensor, exported: np.ndarray, labels: Any = None) -> dict[str, Any]:
    """Largest |logit difference|, top-1 agreement (%), the largest |logit| of the Python path (float32 parity
    is judged within 1e-4 x max(1, that)) and, with labels, both accuracies (%) and their change."""
    ref = reference.numpy()
    ref_top, exp_top = ref.argmax(-1), exported.argmax(-1)
    found: dict[str, Any] = {"images": int(len(ref)), "max_abs_logit_diff": float(np.abs(ref - exported).max())
                             if len(ref) else 0.0, "top1_agreement": 100.0 * float((ref_top == exp_top).mean()),
                             "max_abs_logit": float(np.abs(ref).max()) if len(ref) else 0.0}
    if labels is not None:
        truth = np.asarray(labels).reshape(-1)
        found["accuracy_python"] = 100.0 * float((ref_top == truth).mean())
        found["accuracy_exported"] = 100.0 * float((exp_top == truth).mean())
        found["accuracy_change"] = found["accuracy_exported"] - found["accuracy_python"]
    return found
