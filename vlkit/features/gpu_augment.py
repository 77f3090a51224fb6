"""Augmented views on the device: the store's seeded random resized crop + flip, from decoded images.

``Backbone.train_transform`` (vlkit.backbones.preprocessing) is: RGB, torchvision's
``RandomResizedCrop(size, scale=AUGMENT_SCALE, ratio=(3/4, 4/3))`` with the config's
interpolation (PIL, antialiased), ``RandomHorizontalFlip(AUGMENT_FLIP)``, ``ToTensor``,
``Normalize(mean, std)``. The store seeds torch's generator with
``view * 1_000_003 + index`` before each image (:data:`VIEW_SEED_STRIDE`), so the crop
and flip of an image in a view are a function of (view, index, image size).

:func:`view_crop` draws those same parameters on the CPU from a private generator seeded
the same way (the global generator is never touched, so decode threads cannot race on
it). :func:`augment_views` then applies them to a batch of decoded (3, H, W) uint8 images.
On the GPU, as two batched matrix products per image size: PIL's resampling is
separable, so the crop, the antialiased resize and the flip of each image are one
(S, H) row-weight matrix and one (S, W) column-weight matrix built with PIL's own filter
weights (bicubic a = -0.5, or triangle); like PIL, the horizontal pass runs first and
both passes round and clip to 0..255. On the CPU each crop is resized alone by torch's
uint8 antialiased kernel, which is faster there.
"""
from __future__ import annotations

import functools
import math
import threading
from typing import Sequence

import torch
from open_clip.transform import PreprocessCfg

from vlkit.backbones.preprocessing import AUGMENT_FLIP, AUGMENT_SCALE
from vlkit.features.gpu_decode import resize_uint8

VIEW_SEED_STRIDE = 1_000_003  # the store's seed of image ``index`` in view ``view``: view * stride + index
AUGMENT_RATIO = (3.0 / 4.0, 4.0 / 3.0)  # RandomResizedCrop's default aspect-ratio range


def view_seed(view: int, index: int) -> int:
    """The seed the store gives torch's generator before transforming image ``index`` for ``view``."""
    return view * VIEW_SEED_STRIDE + index


_LOCAL = threading.local()


def _generator(seed: int) -> tuple[torch.Generator, torch.Tensor]:
    """This thread's CPU generator, seeded with ``seed``, and a 1-element float32 buffer to draw into."""
    if not hasattr(_LOCAL, "gen"):
        _LOCAL.gen, _LOCAL.draw = torch.Generator(), torch.empty(1)
    return _LOCAL.gen.manual_seed(seed), _LOCAL.draw


@functools.lru_cache(maxsize=8)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """The float32 logs of the ratio range, as torchvision computes them."""
    low, high = torch.log(torch.tensor(ratio)).tolist()
    return low, high


def view_crop(height: int, width: int, seed: int, scale: Sequence[float] = AUGMENT_SCALE,
              ratio: Sequence[float] = AUGMENT_RATIO, flip_p: float = AUGMENT_FLIP) -> tuple[int, int, int, int, bool]:
    """(top, left, crop height, crop width, flipped) that ``train_transform`` draws after ``torch.manual_seed(seed)``.

    The draws of torchvision's ``RandomResizedCrop.get_params`` (up to 10 tries of area
    and log-ratio, then the centre-crop fallback) and then ``RandomHorizontalFlip``'s one
    ``torch.rand(1)``, in that order, from a private generator.
    """
    gen, draw = _generator(seed)
    area = height * width
    log_lo, log_hi = _log_ratio(tuple(ratio))
    crop = None
    for _ in range(10):
        target_area = area * draw.uniform_(scale[0], scale[1], generator=gen).item()
        aspect = draw.uniform_(log_lo, log_hi, generator=gen).exp_().item()  # float32 exp, as torchvision's
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, size=(1,), generator=gen).item())
            left = int(torch.randint(0, width - w + 1, size=(1,), generator=gen).item())
            crop = (top, left, h, w)
            break
    if crop is None:  # torchvision's fallback: the central crop within the ratio range
        in_ratio = width / height
        if in_ratio < min(ratio):
            w, h = width, int(round(width / min(ratio)))
        elif in_ratio > max(ratio):
            h, w = height, int(round(height * max(ratio)))
        else:
            w, h = width, height
        crop = ((height - h) // 2, (width - w) // 2, h, w)
    flipped = bool(torch.rand(1, generator=gen).item() < flip_p)
    return (*crop, flipped)


def _filter(t: torch.Tensor, interpolation: str) -> torch.Tensor:
    """PIL's resampling filter at offsets ``t``: bicubic (a = -0.5, support 2) or triangle (support 1)."""
    t = t.abs()
    if interpolation == "bilinear":
        return (1.0 - t).clamp_(min=0.0)
    a = -0.5
    near = ((a + 2.0) * t - (a + 3.0)) * t * t + 1.0
    far = (((t - 5.0) * t + 8.0) * t - 4.0) * a
    return torch.where(t < 1.0, near, torch.where(t < 2.0, far, torch.zeros_like(t)))


def resample_weights(starts: torch.Tensor, lengths: torch.Tensor, in_size: int, out_size: int,
                     interpolation: str, flip: torch.Tensor | None = None) -> torch.Tensor:
    """(B, out_size, in_size) weights that resize ``[start, start + length)`` of an axis to ``out_size``.

    PIL's ``precompute_coeffs`` on the cropped segment: scale = length / out, the filter
    widened by max(scale, 1) (antialiasing), taps centred on ``(o + 0.5) * scale``, clipped
    to the segment and normalised to sum 1; ``flip`` (B,) reverses the output order.
    ``starts``, ``lengths``: (B,) integer tensors on the target device.
    """
    device = starts.device
    starts, lengths = starts.double(), lengths.double()
    scale = (lengths / out_size).view(-1, 1, 1)  # (B, 1, 1)
    filter_scale = scale.clamp(min=1.0)
    centres = starts.view(-1, 1, 1) + (torch.arange(out_size, device=device, dtype=torch.float64).view(1, -1, 1)
                                       + 0.5) * scale  # (B, out, 1)
    pixels = torch.arange(in_size, device=device, dtype=torch.float64).view(1, 1, -1)  # (1, 1, in)
    weights = _filter((pixels + 0.5 - centres) / filter_scale, interpolation)  # (B, out, in)
    inside = (pixels >= starts.view(-1, 1, 1)) & (pixels < (starts + lengths).view(-1, 1, 1))
    weights = weights * inside
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if flip is not None:
        weights = torch.where(flip.view(-1, 1, 1).to(device), weights.flip(1), weights)
    return weights.float()


def augment_views(images: Sequence[torch.Tensor], indices: Sequence[int], views: Sequence[int],
                  cfg: PreprocessCfg, batched: bool | None = None) -> dict[int, torch.Tensor]:
    """{view: (B, 3, S, S) float32} normalised augmented views of decoded (3, H, W) uint8 ``images``.

    ``indices[i]`` is image i's dataset index (the seed's second part). ``batched`` (default:
    on any device but the CPU) builds each size group's crops as two batched matrix products
    (:func:`resample_weights`: one kernel per group and view, whatever the crops); otherwise
    each crop is sliced and resized alone with torch's uint8 antialiased kernel (fastest on
    the CPU). Both reproduce PIL's crop + resize within a grey level.
    """
    if not images:
        raise ValueError("no images to augment")
    side = cfg.size if isinstance(cfg.size, int) else int(cfg.size[0])
    mode = "bilinear" if cfg.interpolation == "bilinear" else "bicubic"
    device = images[0].device
    batched = device.type != "cpu" if batched is None else batched
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1)
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1)
    out = {view: torch.empty(len(images), 3, side, side, device=device) for view in views}
    if not batched:
        for i, (image, index) in enumerate(zip(images, indices)):
            h, w = image.shape[-2:]
            for view in views:
                top, left, ch, cw, flipped = view_crop(h, w, view_seed(view, index))
                crop = image[None, :, top:top + ch, left:left + cw]  # (1, 3, ch, cw) uint8
                pixels = resize_uint8(crop, (side, side), mode).float()  # (1, 3, S, S)
                out[view][i] = ((pixels.flip(-1) if flipped else pixels) / 255.0 - mean)[0] / std[0]
        return out
    groups: dict[tuple[int, int], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape[-2:]), []).append(i)
    for (h, w), idx in groups.items():
        x = torch.stack([images[i] for i in idx]).float()  # (b, 3, h, w)
        for view in views:
            crops = torch.tensor([view_crop(h, w, view_seed(view, indices[i])) for i in idx])  # (b, 5)
            crops = crops.to(device)
            cols = resample_weights(crops[:, 1], crops[:, 3], w, side, mode, flip=crops[:, 4].bool())  # (b, S, w)
            rows = resample_weights(crops[:, 0], crops[:, 2], h, side, mode)  # (b, S, h)
            across = torch.matmul(x, cols.transpose(1, 2).unsqueeze(1)).round_().clamp_(0, 255)  # (b, 3, h, S)
            both = torch.matmul(rows.unsqueeze(1), across).round_().clamp_(0, 255)  # (b, 3, S, S)
            out[view][idx] = (both / 255.0 - mean) / std
    return out
