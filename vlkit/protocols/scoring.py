"""Accuracy and cost: every result reports both (DESIGN.md, Evaluation)."""
from __future__ import annotations

import contextlib
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import torch


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """Top-1 and mean per-class accuracy (in percent) of (N, C) logits against (N,) labels."""
    labels = torch.as_tensor(labels).long()
    pred = logits.argmax(dim=-1).cpu()
    correct = (pred == labels).float()
    classes = labels.unique()
    per_class = torch.stack([correct[labels == c].mean() for c in classes])
    return {"top1": 100.0 * float(correct.mean()), "mean_per_class": 100.0 * float(per_class.mean())}


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:  # not Linux: fall back to the lifetime peak
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


@contextlib.contextmanager
def measure(device: torch.device | str = "cpu") -> Iterator[dict[str, Any]]:
    """Measure wall time and peak memory of the block.

    CPU: the process resident set size, sampled every 5 ms (peak, in bytes).
    CUDA: ``torch.cuda.max_memory_allocated`` over the block.
    """
    device = torch.device(device)
    result: dict[str, Any] = {}
    stop = threading.Event()
    peak = [_rss_bytes()]

    def sample() -> None:
        while not stop.wait(0.005):
            peak[0] = max(peak[0], _rss_bytes())

    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
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
