"""Load and run an exported model: ONNX through onnxruntime, TorchScript through ``torch.jit.load``.

Both give ``(logits, probabilities)`` as float32 numpy arrays (N, C) for preprocessed images
(N, 3, H, W), and the metadata written at export (class names, preprocessing, method).
"""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vlkit.errors import VlkitError

METADATA_KEY = "vlkit"  # ONNX metadata_props key, and the TorchScript extra file "vlkit.json"
TORCHSCRIPT_EXTRA = "vlkit.json"


def require_onnx() -> Any:
    """``onnxruntime``, or a one-line error naming the extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise VlkitError("ONNX export needs onnx and onnxruntime: pip install 'vlkit[export]'") from None
    return onnxruntime


class ExportedModel:
    """An exported classifier loaded for inference on CPU (``threads`` intra-op threads; None: the runtime's default)."""

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise VlkitError(f"exported model not found: {self.path}")
        self.format = "onnx" if self.path.suffix == ".onnx" else "torchscript"
        if self.format == "onnx":
            ort = require_onnx()
            options = ort.SessionOptions()
            if threads is not None:
                options.intra_op_num_threads, options.inter_op_num_threads = threads, 1
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
            props = self.session.get_modelmeta().custom_metadata_map
            self.metadata: dict[str, Any] = json.loads(props.get(METADATA_KEY, "{}"))
        else:
            extra = {TORCHSCRIPT_EXTRA: ""}
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load's deprecation notice
                self.module = torch.jit.load(str(self.path), map_location="cpu", _extra_files=extra)
            self.metadata = json.loads(extra[TORCHSCRIPT_EXTRA] or "{}")

    @property
    def classnames(self) -> list[str]:
        """The C class names, in logit order."""
        return list(self.metadata.get("classnames", []))

    def __call__(self, images: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3, H, W) preprocessed float32 images -> logits (N, C), probabilities (N, C)."""
        if self.format == "onnx":
            array = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
            logits, probs = self.session.run(None, {"image": array.astype(np.float32, copy=False)})
            return logits, probs
        with torch.no_grad():
            logits, probs = self.module(torch.as_tensor(images, dtype=torch.float32))
        return logits.numpy(), probs.numpy()

    def logits(self, images: torch.Tensor | np.ndarray, batch_size: int = 256) -> np.ndarray:
        """(N, C) logits, run in batches of ``batch_size``."""
        out = [self(images[i:i + batch_size])[0] for i in range(0, len(images), batch_size)]
        return np.concatenate(out) if out else np.zeros((0, len(self.classnames)), np.float32)
