"""``export_run``: a saved run folder -> one exported model, checked on the run's test data."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from vlkit.apps.export.writer import check_format, export_method
from vlkit.errors import VlkitError

DEFAULT_CHECK_IMAGES = 1000
SELECT_IMAGES = 500  # train images the --int8 rung is chosen on (never test images)


def _load(run_dir: Path) -> tuple[Any, Any, str | None]:
    """(method, backbone on CPU, the run's data or None) of a fit run or an upgrade run."""
    record = run_dir / "run.json"
    try:
        raw = json.loads(record.read_bytes()) if record.is_file() else None
    except (OSError, ValueError):
        raw = None  # the readers below name the damage
    if isinstance(raw, dict) and "state" in raw and "method" not in raw:  # a `vlkit upgrade` run
        from vlkit.apps.upgrade import load_backbone_for, load_method, read_meta

        meta = read_meta(run_dir)
        return load_method(run_dir, meta), load_backbone_for(meta, device="cpu"), None
    from vlkit.apps.commands import load_run

    run, method, backbone = load_run(run_dir, device="cpu")
    return method, backbone, run["data"]


def check_set(backbone: Any, data: str, classnames: list[str], limit: int | None,
              split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
    """Preprocessed images (N, 3, H, W) and labels (N,) of ``data``'s ``split``: at most ``limit``, evenly spaced."""
    from vlkit.data.resolve import load_data

    dataset = load_data(data, split)
    if list(dataset.classnames) != list(classnames):
        raise VlkitError(f"{data} has other classes than the run ({len(classnames)} classes): check with the "
                         "run's own data, or pass --check-images 0")
    n = len(dataset) if limit is None else min(limit, len(dataset))
    picks = torch.linspace(0, len(dataset) - 1, n).round().long().unique().tolist() if n else []
    images = torch.stack([backbone.preprocess(dataset.image(i).convert("RGB")) for i in picks]) if picks else \
        torch.zeros(0, 3, *backbone.preprocess_cfg.size)
    labels = torch.tensor([dataset.labels[i] for i in picks], dtype=torch.long)
    return images, labels


def export_run(run_dir: str | Path, format: str = "onnx", int8: bool = False, out: str | Path | None = None,
               data: str | None = None, check_images: int | None = DEFAULT_CHECK_IMAGES) -> dict[str, Any]:
    """Export the run in ``run_dir`` (``vlkit fit --run-dir`` or ``vlkit upgrade``) to ``out``; a JSON-ready report.

    The exported model is then run on up to ``check_images`` test images of ``data`` (default:
    the run's own data; an upgrade run has none, so it is checked only with ``data``) and
    compared with the Python path: ``check`` holds the largest logit difference, the top-1
    agreement and both accuracies (with ``int8``, the accuracy change quantisation costs).
    With ``int8`` and data, how much is quantised is chosen on up to 500 *train* images of
    ``data`` (:data:`vlkit.apps.export.int8.LADDER`); without data, the default rule.
    ``check_images`` 0 skips the check.
    """
    if out is None:
        raise VlkitError("name the file to write: --out model.onnx (or model.pt for TorchScript)")
    check_format(format, out)  # a wrong format or file name fails before any loading
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VlkitError(f"{run_dir} is not a run folder: create one with `vlkit fit ... --run-dir`")
    method, backbone, run_data = _load(run_dir)
    data = data or run_data
    images = labels = select = None
    if data is not None and check_images != 0:
        images, labels = check_set(backbone, data, method.classnames_, check_images)
    if data is not None and int8:  # the int8 rung is chosen on train images
        select = check_set(backbone, data, method.classnames_, SELECT_IMAGES, split="train")[0]
    report = export_method(method, backbone, out, format=format, int8=int8, check_images=images,
                           check_labels=labels, owned=True, select_images=select)
    report.update({"run": str(run_dir), "check_data": data if images is not None else None})
    return report
