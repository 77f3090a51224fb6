"""JPEG extraction on the GPU: CPU workers read file bytes, the GPU decodes and resizes in batches.

A PIL DataLoader spends its time in JPEG decoding and resizing on the CPU (about 1.2k
images/s with 15 workers on an H200 host), far below what the encoder takes
(ViT-B-16 bf16: about 7k/s). Here workers only read bytes; ``torchvision.io.decode_jpeg``
decodes a whole batch with nvJPEG on the GPU and the resize, centre crop and
normalisation run there too, reproducing ``Backbone.preprocess`` (shorter side to
``image_size`` with antialiased bicubic, centre crop, ToTensor, Normalize).

Used only for the evaluation view (view 0) of JPEG files on a CUDA backbone; on CPU
the PIL path stays. A file nvJPEG cannot decode (CMYK, progressive corner cases) is
decoded by PIL on the CPU and uploaded, so every path yields an image.
"""
from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

JPEG_MAGIC = b"\xff\xd8\xff"
JPEG_SUFFIXES = (".jpg", ".jpeg", ".jpe", ".jfif")


def is_jpeg(path: str | Path) -> bool:
    """Whether the file starts with the JPEG SOI marker (FF D8 FF)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(3) == JPEG_MAGIC
    except OSError:
        return False


def jpeg_paths(dataset: Any, start: int = 0, stop: int | None = None) -> list[str] | None:
    """File paths of items ``[start, stop)`` if every one is a ``.jpg``/``.jpeg`` file, else None.

    The suffix decides (a cheap check over a large dataset) and the first file's
    magic bytes are read; a mislabelled file later on still decodes via PIL.
    """
    items = dataset.items[start:stop]
    paths = [str(src) for src, _ in items if isinstance(src, (str, Path))]
    if not paths or len(paths) != len(items) or not all(p.lower().endswith(JPEG_SUFFIXES) for p in paths):
        return None
    return paths if is_jpeg(paths[0]) else None


def gpu_decode_enabled() -> bool:
    """False when ``VLKIT_GPU_DECODE=0`` (force the PIL path, e.g. to compare the two)."""
    return os.environ.get("VLKIT_GPU_DECODE", "1") != "0"


def gpu_paths_for(backbone: Any, dataset: Any, view: int, start: int = 0, stop: int | None = None) -> list[str] | None:
    """The JPEG paths of items ``[start, stop)`` when the GPU path applies, else None.

    It applies to the evaluation view (0) of a dataset of JPEG files on a CUDA backbone,
    unless ``VLKIT_GPU_DECODE=0``. Augmented views keep the PIL path (random crops).
    """
    if view != 0 or getattr(backbone.device, "type", "cpu") != "cuda" or not gpu_decode_enabled():
        return None
    return jpeg_paths(dataset, start, stop)


def preprocess_params(backbone: Any) -> tuple[int, tuple[float, ...], tuple[float, ...]]:
    """(image_size, mean, std) of ``backbone.preprocess`` (its Normalize step)."""
    steps = getattr(backbone.preprocess, "transforms", [])
    norm = next((t for t in steps if type(t).__name__ == "Normalize"), None)
    if norm is None:
        raise ValueError("backbone.preprocess has no Normalize step: cannot reproduce it on the GPU")
    return int(backbone.image_size), tuple(float(m) for m in norm.mean), tuple(float(s) for s in norm.std)


class _FileBytes(Dataset):
    """Item i: the raw bytes of ``paths[i]`` as a 1-d uint8 tensor (DataLoader workers run this)."""

    def __init__(self, paths: Sequence[str]) -> None:
        self.paths = list(paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        return torch.frombuffer(bytearray(Path(self.paths[i]).read_bytes()), dtype=torch.uint8)


def _pil_decode(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 via PIL, for files the GPU decoder rejects."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_batch(datas: list[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Decode JPEG byte tensors to (3, H, W) uint8 images on ``device`` (batched; PIL fallback per file)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its codecs deprecated (TorchCodec)
        try:
            return list(decode_jpeg(datas, mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            out = []
            for data in datas:
                try:
                    out.append(decode_jpeg(data, mode=ImageReadMode.RGB, device=device))
                except RuntimeError:
                    out.append(_pil_decode(data).to(device))
            return out


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer is truncated to scale."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def resize_normalize(images: list[torch.Tensor], image_size: int, mean: Sequence[float], std: Sequence[float]
                     ) -> torch.Tensor:
    """(3, H, W) uint8 images of any sizes -> (B, 3, S, S) float32, as ``Backbone.preprocess`` does.

    Images of one size are resized together; values are rounded and clamped to
    0..255 after the resize, as PIL does, before scaling and normalising.
    """
    if not images:
        raise ValueError("no images to resize")
    device = images[0].device
    out = torch.empty(len(images), 3, image_size, image_size, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx]).float()  # (b, 3, h, w)
        nh, nw = resized_size(h, w, image_size)
        if (nh, nw) != (h, w):
            x = F.interpolate(x, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False)
            x = x.clamp_(0, 255).round_()
        top, left = int(round((nh - image_size) / 2.0)), int(round((nw - image_size) / 2.0))
        x = x[:, :, top:top + image_size, left:left + image_size]
        out[idx] = (x / 255.0 - m) / s
    return out


def gpu_image_batches(paths: Sequence[str | Path], image_size: int, mean: Sequence[float], std: Sequence[float],
                      batch_size: int = 256, device: str | torch.device = "cuda",
                      num_workers: int | None = None) -> Iterator[torch.Tensor]:
    """Yield (B, 3, S, S) float32 batches on ``device``, in the order of ``paths``.

    Workers read bytes ahead (``prefetch_factor`` 4) while the GPU decodes the
    current batch. ``device="cpu"`` runs the same pipeline on the CPU (tests).
    """
    workers = min(8, max(0, (os.cpu_count() or 1) - 1)) if num_workers is None else num_workers
    loader = DataLoader(_FileBytes([str(p) for p in paths]), batch_size=batch_size, num_workers=workers,
                        collate_fn=list, prefetch_factor=4 if workers else None, persistent_workers=False)
    for datas in loader:
        yield resize_normalize(decode_batch(datas, device), image_size, mean, std)
