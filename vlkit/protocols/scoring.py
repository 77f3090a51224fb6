"""Accuracy and cost: every result reports both (DESIGN.md, Evaluation); :func:`score` builds the one Result."""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from vlkit.features.store import FeatureStore, _ImageTensors
from vlkit.report.result import Result


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and mean per-class accuracy (in percent) of (N, C) logits against (N,) labels."""
    labels = torch.as_tensor(labels).long()
    pred = logits.argmax(dim=-1).cpu()
    correct = (pred == labels).float()
    classes = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in classes])
    return {"top1": 100.0 * float(correct.mean()), "mean_per_class": 100.0 * float(per_class.mean())}


def per_class_accuracy(logits: torch.Tensor, labels: torch.Tensor, classnames: list[str]) -> dict[str, float]:
    """Accuracy (percent) of each class present in ``labels``, keyed by its name, in class order."""
    labels = torch.as_tensor(labels).long()
    correct = (logits.argmax(dim=-1).cpu() == labels).float()  # (N,)
    return {classnames[int(c)]: 100.0 * float(correct[labels == c].mean()) for c in labels.unique()}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the lifetime peak
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _release_free_memory() -> None:
    """Hand memory freed earlier back to the OS (glibc ``malloc_trim``), so a block's RSS peak is its own."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: the baseline is simply less tight
        pass


@contextlib.contextmanager
def measure(device: torch.device | str = "cpu") -> Iterator[dict[str, Any]]:
    """Measure wall time and peak memory of the block.

    CPU: the process resident set size, sampled every 5 ms (peak, in bytes).
    CUDA: ``torch.cuda.max_memory_allocated`` over the block.
    ``train_memory_bytes`` is the same peak above the level at the block's start (the loaded
    model and data): RSS above the start on CPU (after freed memory is handed back to the
    OS), allocated bytes above the start on CUDA. Every method's training memory is measured
    this one way.
    """
    device = torch.device(device)
    result: dict[str, Any] = {}
    stop = threading.Event()
    _release_free_memory()
    peak = [_rss_bytes()]
    baseline = peak[0]

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_bytes())

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        baseline = int(torch.cuda.memory_allocated(device))
    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start = time.perf_counter()
    try:
        yield result
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        result["seconds"] = time.perf_counter() - start
        stop.set()
        sampler.join()
        peak[0] = max(peak[0], _rss_bytes())
        if device.type == "cuda":
            result["peak_memory_bytes"] = int(torch.cuda.max_memory_allocated(device))
            result["memory_kind"] = "cuda_max_allocated"
        else:
            result["peak_memory_bytes"] = int(peak[0])
            result["memory_kind"] = "process_rss"
        result["train_memory_bytes"] = max(0, result["peak_memory_bytes"] - baseline)


def batch_size_of(method: Any) -> int | None:
    """The training batch size of a fitted method (its fit record, else its config), if it has one."""
    size = (getattr(method, "fit_info_", None) or {}).get("batch_size", getattr(method.config, "batch_size", None))
    return int(size) if isinstance(size, int) and size > 0 else None


def train_memory_per_image(train_bytes: int | None, method: Any) -> float | None:
    """Training memory per image of the batch (bytes), None when either is unknown."""
    size = batch_size_of(method)
    return None if train_bytes is None or size is None else train_bytes / size


def artifact_bytes(method: Any, fingerprint: str | None = None) -> int:
    """Bytes of the method's saved artifact (config.json + state.safetensors)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = method.save(Path(tmp) / "artifact", backbone_fingerprint=fingerprint)
        return sum(f.stat().st_size for f in out.iterdir())


def latency_per_image(method: Any, backbone: Any, images: torch.Tensor, repeats: int = 3) -> float:
    """Seconds per image to classify preprocessed (N, 3, H, W) ``images`` end to end.

    Feature-level methods: encode with the frozen backbone, then ``logits``.
    Image-level methods: ``logits`` on the images. Best of ``repeats`` runs (one when a run
    takes over 0.5 s).
    """
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        with torch.no_grad():
            x = images if method.input_kind == "images" else backbone.encode_images(images).cpu()
            method.logits(x)
        if backbone.device.type == "cuda":
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        best = min(best, elapsed)
        if elapsed > 0.5:  # a run this long is not noise-bound: no need to repeat it
            break
    return best / max(len(images), 1)


def method_logits(method: Any, backbone: Any, dataset: Any, store: FeatureStore | None = None,
                  batch_size: int = 256) -> torch.Tensor:
    """(N, C) logits of ``method`` on every item of ``dataset`` (features from the store)."""
    if method.input_kind == "features":
        feats = (store or FeatureStore()).image_features(backbone, dataset)  # (N, D)
        return torch.cat([method.logits(feats[i:i + 4096]) for i in range(0, len(feats), 4096)])
    loader = DataLoader(_ImageTensors(dataset, backbone.preprocess, 0, len(dataset), None), batch_size=batch_size)
    return torch.cat([method.logits(batch.to(backbone.device)).cpu() for batch in loader])


def sample_images(backbone: Any, dataset: Any, n: int = 32) -> torch.Tensor:
    """(n, 3, H, W) preprocessed images (the first ``n``) for latency measurement."""
    count = min(n, len(dataset))
    return torch.stack([backbone.preprocess(dataset.image(i)) for i in range(count)])


def score(method: Any, backbone: Any, test_set: Any, store: FeatureStore | None = None,
          cost: dict[str, Any] | None = None, *, shots: int | None = None, seed: int | None = None,
          dataset: str | None = None, settings: dict[str, Any] | None = None,
          extras: dict[str, Any] | None = None, latency: bool = True) -> Result:
    """Score a fitted ``method`` once on ``test_set`` and build its :class:`Result` with the cost.

    The logits are computed before any label is read; a test set with hidden labels
    (:class:`~vlkit.data.guard.HiddenLabelDataset`) is revealed only after that. ``cost`` is
    what :func:`measure` recorded around ``fit`` (``None``: no fit was timed). ``dataset``
    names the data (default: ``test_set.name``); ``settings`` are the options the run set.
    """
    logits = method_logits(method, backbone, test_set, store)  # (N, C), fixed before the labels are read
    reveal = getattr(test_set, "reveal", None)
    labels = torch.tensor(reveal() if callable(reveal) else test_set.labels)  # (N,)
    cost = cost or {}
    ms = 1000 * latency_per_image(method, backbone, sample_images(backbone, test_set)) if latency else None
    return Result(
        method=method.name, family=method.family, shots=shots, seed=seed, model=backbone.name,
        pretrained=backbone.pretrained, dataset=dataset if dataset is not None else test_set.name,
        test_size=len(test_set), **accuracy(logits, labels), per_class=per_class_accuracy(logits, labels, list(test_set.classnames)),
        trainable_parameters=int(method.trainable_parameters),
        artifact_bytes=artifact_bytes(method, backbone.fingerprint), fit_seconds=cost.get("seconds"),
        peak_memory_bytes=cost.get("peak_memory_bytes"), memory_kind=cost.get("memory_kind"),
        train_memory_bytes=cost.get("train_memory_bytes"),
        train_memory_per_image_bytes=train_memory_per_image(cost.get("train_memory_bytes"), method),
        latency_ms_per_image=ms, fit_info=dict(getattr(method, "fit_info_", None) or {}),
        settings=dict(settings or {}), fingerprint=backbone.fingerprint, extras=dict(extras or {}),
    )
