"""JPEG decoding and the evaluation preprocessing on tensors: the pieces of the extraction pipeline.

A PIL DataLoader spends its time in JPEG decoding and resizing on the CPU (about 1.2k
images/s with 15 workers on an H200 host), far below what the encoder takes
(ViT-B-16 bf16: about 7k/s). Here threads only read bytes; ``torchvision.io.decode_jpeg``
decodes a whole batch (nvJPEG on the GPU) and the resize, crop or pad and
normalisation run on the same device, reproducing ``Backbone.preprocess`` from the same
open_clip preprocessing config: each resize mode (shorter side + centre crop, longer side
+ centre pad with the fill colour, squash), antialiased bicubic or bilinear, then Normalize.

:mod:`vlkit.features.pipeline` runs these as overlapped stages (and the augmented views of
:mod:`vlkit.features.gpu_augment` beside them) for JPEG files when :func:`gpu_reproduces`
accepts the backbone's config; otherwise the PIL path stays. A file the batched decoder
rejects (CMYK, progressive corner cases) is decoded by PIL on the CPU and uploaded, so
every path yields an image.
"""
from __future__ import annotations

import io
import os
import warnings
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
import torch.nn.functional as F
from open_clip.transform import PreprocessCfg

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


def preprocess_params(backbone: Any) -> PreprocessCfg:
    """The open_clip preprocessing config ``backbone.preprocess`` is built on."""
    return backbone.preprocess_cfg


def gpu_reproduces(cfg: PreprocessCfg) -> bool:
    """Whether :func:`resize_normalize` reproduces open_clip's evaluation transform for ``cfg``.

    Every resize mode (shortest, longest, squash) and interpolation (bicubic, bilinear;
    "random" means bicubic at evaluation) of a square size with a single fill value.
    """
    height, width = (cfg.size, cfg.size) if isinstance(cfg.size, int) else tuple(cfg.size)
    return (height == width and cfg.resize_mode in ("shortest", "longest", "squash")
            and cfg.interpolation in ("bicubic", "bilinear", "random") and isinstance(cfg.fill_color, int))


def read_bytes(path: str) -> torch.Tensor:
    """The raw bytes of ``path`` as a 1-d uint8 tensor (no copy beyond the read)."""
    return torch.frombuffer(bytearray(Path(path).read_bytes()), dtype=torch.uint8)


def read_bytes_or_none(path: str) -> torch.Tensor | None:
    """:func:`read_bytes`, or None when the file cannot be read or is empty (its decode fallback then
    reports it as the PIL path does)."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return None
    return torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else None


def prefetched_bytes(paths: Sequence[str], batch_size: int, workers: int, ahead: int = 4,
                     reader: Callable[[str], Any] = read_bytes,
                     sizes: Sequence[int] | None = None) -> Iterator[list[Any]]:
    """Batches of file bytes in ``paths`` order, read by ``workers`` threads up to ``ahead`` batches early.

    Batches hold ``batch_size`` files (the last fewer), or ``sizes[k]`` files for batch k
    when ``sizes`` is given (they sum to ``len(paths)``). Threads, not DataLoader
    processes: a file read releases the GIL, and handing hundreds of small tensors per
    batch from worker processes through shared memory cost more than the GPU's decode
    (1.7k images/s on an H200 host, against 7k/s for the encoder).
    """
    if sizes is None:
        sizes = [min(batch_size, len(paths) - start) for start in range(0, len(paths), batch_size)]
    if sum(sizes) != len(paths):
        raise ValueError(f"batch sizes {list(sizes)} do not add up to {len(paths)} paths")
    if workers <= 0:
        start = 0
        for size in sizes:
            yield [reader(p) for p in paths[start:start + size]]
            start += size
        return
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque = deque()  # futures of the reads in flight, in path order
        submitted = 0
        for size in sizes:
            while submitted < len(paths) and len(pending) < max(ahead * batch_size, size):
                pending.append(pool.submit(reader, paths[submitted]))
                submitted += 1
            yield [pending.popleft().result() for _ in range(size)]


def pil_decode(data: torch.Tensor) -> torch.Tensor:
    """(3, H, W) uint8 via PIL, for files the GPU decoder rejects."""
    import numpy as np
    from PIL import Image

    with Image.open(io.BytesIO(data.numpy().tobytes())) as img:
        array = np.asarray(img.convert("RGB"))
    return torch.from_numpy(array.copy()).permute(2, 0, 1)


def decode_or_fallback(datas: Sequence[torch.Tensor | None], device: str | torch.device,
                       fallback: Callable[[int], torch.Tensor], pool: Any = None) -> list[torch.Tensor]:
    """Decode JPEG byte tensors to (3, H, W) uint8 images on ``device``, the whole list in one call.

    On the CPU with a thread ``pool`` (an executor), files are decoded one per task in it
    instead (``decode_jpeg`` releases the GIL while it decodes, so they run in parallel).
    When the batched call fails, each file is decoded alone; ``fallback(i)`` gives image
    ``i`` (a CPU (3, H, W) uint8 tensor) for a file that is None (unreadable), that the
    decoder rejects, or that is larger than PIL's ``MAX_IMAGE_PIXELS`` (the PIL path refuses
    those, so the fallback does too).
    """
    from PIL import Image
    from torchvision.io import ImageReadMode, decode_jpeg

    device = torch.device(device)
    present = [i for i, data in enumerate(datas) if data is not None]
    out: list[torch.Tensor | None] = [None] * len(datas)

    def decode_one(data: torch.Tensor) -> torch.Tensor | None:
        try:
            return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
        except RuntimeError:
            return None

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchvision >= 0.29 marks its codecs deprecated (TorchCodec)
        if pool is not None and device.type == "cpu":
            for i, image in zip(present, pool.map(decode_one, [datas[i] for i in present])):
                out[i] = image
            present = []
        try:
            decoded = decode_jpeg([datas[i] for i in present], mode=ImageReadMode.RGB, device=device) \
                if present else []
            for i, image in zip(present, decoded):
                out[i] = image
        except RuntimeError:
            for i in present:
                out[i] = decode_one(datas[i])
    limit = Image.MAX_IMAGE_PIXELS
    for i, image in enumerate(out):
        if image is None or (limit and image.shape[-2] * image.shape[-1] > limit):
            out[i] = fallback(i).to(device)
    return out  # type: ignore[return-value]


def decode_batch(datas: list[torch.Tensor], device: str | torch.device) -> list[torch.Tensor]:
    """Decode JPEG byte tensors to (3, H, W) uint8 images on ``device`` (batched; PIL fallback per file)."""
    return decode_or_fallback(datas, device, lambda i: pil_decode(datas[i]))


def resized_size(height: int, width: int, size: int) -> tuple[int, int]:
    """torchvision ``Resize(size)``: the shorter side becomes ``size``, the longer is truncated to scale."""
    if height <= width:
        return size, int(size * width / height)
    return int(size * height / width), size


def mode_resized_size(height: int, width: int, side: int, resize_mode: str) -> tuple[int, int]:
    """The (h, w) open_clip's evaluation transform resizes an image to, before its crop or pad.

    shortest: torchvision ``Resize(side)``; longest: open_clip's ``ResizeKeepRatio``
    (longer side to ``side``, Python rounding); squash: ``(side, side)``.
    """
    if resize_mode == "squash":
        return side, side
    if resize_mode == "longest":
        ratio = max(height / side, width / side)
        return round(height / ratio), round(width / ratio)
    return resized_size(height, width, side)


def crop_or_pad(x: torch.Tensor, side: int, fill: float) -> torch.Tensor:
    """(b, 3, h, w) -> (b, 3, side, side): pad short edges with ``fill`` (centred), then centre crop.

    open_clip's ``center_crop_or_pad`` (and torchvision's ``CenterCrop``) on a tensor.
    """
    h, w = x.shape[-2:]
    if side > h or side > w:
        pad_w, pad_h = max(side - w, 0), max(side - h, 0)
        x = F.pad(x, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2), value=fill)
        h, w = x.shape[-2:]
    top, left = int(round((h - side) / 2.0)), int(round((w - side) / 2.0))
    return x[:, :, top:top + side, left:left + side]


def resize_uint8(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """(b, 3, h, w) uint8 -> (b, 3, *size) values rounded and clipped to 0..255, antialiased as PIL resamples.

    On the CPU torch's uint8 kernel (about 7x faster than float there, within one grey
    level of it); elsewhere in float32, then rounded and clamped (the result is float).
    """
    if x.device.type == "cpu":
        return F.interpolate(x, size=size, mode=mode, antialias=True, align_corners=False)
    x = F.interpolate(x.float(), size=size, mode=mode, antialias=True, align_corners=False)
    return x.clamp_(0, 255).round_()


def resize_normalize(images: list[torch.Tensor], cfg: PreprocessCfg) -> torch.Tensor:
    """(3, H, W) uint8 images of any sizes -> (B, 3, S, S) float32, as ``Backbone.preprocess`` does for ``cfg``.

    Images of one size are resized together; values are rounded and clamped to
    0..255 after the resize, as PIL does, before the crop or pad, scaling and normalising.
    """
    if not images:
        raise ValueError("no images to resize")
    if not gpu_reproduces(cfg):
        raise ValueError(f"the batched decode cannot reproduce preprocessing {cfg}; use the PIL path")
    side = cfg.size if isinstance(cfg.size, int) else int(cfg.size[0])
    mode = "bilinear" if cfg.interpolation == "bilinear" else "bicubic"
    device = images[0].device
    out = torch.empty(len(images), 3, side, side, device=device)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    m = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx])  # (b, 3, h, w) uint8
        nh, nw = mode_resized_size(h, w, side, cfg.resize_mode)
        if (nh, nw) != (h, w):
            x = resize_uint8(x, (nh, nw), mode)
        x = crop_or_pad(x.float(), side, float(cfg.fill_color))  # (b, 3, side, side)
        out[idx] = (x / 255.0 - m) / s
    return out
