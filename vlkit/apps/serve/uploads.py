"""Uploaded bytes -> RGB images, under limits, with one clear message per refusal.

A request never names a file: an upload is bytes in memory, decoded by PIL from a
``BytesIO``; its client-side file name is only echoed back as a label for the client.
Each refusal is an :class:`Refused` carrying the HTTP status and one line that says
what was wrong and what the limit is.
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image, UnidentifiedImageError

# Formats a browser or a camera produces; anything else (PDF, SVG, PSD, ...) is refused even
# when PIL has a plugin for it: fewer decoders reachable from the network.
ACCEPTED_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")


class Refused(Exception):
    """A request the service refuses: ``status`` (4xx) and a one-line ``message``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Limits:
    """What one request may carry.

    ``max_upload_bytes``: the whole request body; ``max_pixels``: width x height of one image
    (checked from the header, before decoding); ``max_side``: the longer side of one image;
    ``max_batch``: images in one request; ``max_request_pixels``: all images of one request
    together (a small PNG of one colour can declare millions of pixels: without this bound
    one request of many such images would decode to gigabytes).
    """

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_side: int = 8192
    max_batch: int = 64
    max_request_pixels: int = 64_000_000

    def check(self) -> "Limits":
        """Refuse limits that would admit nothing (a ValueError naming the field)."""
        for name in ("max_upload_bytes", "max_pixels", "max_side", "max_batch", "max_request_pixels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        return self


def check_batch(count: int, limits: Limits) -> None:
    """Refuse an empty request or one with more than ``limits.max_batch`` images."""
    if count == 0:
        raise Refused(422, "no image in the request: send one or more files in the form field 'files'")
    if count > limits.max_batch:
        raise Refused(413, f"{count} images in one request; this server takes at most {limits.max_batch} "
                                 "(--max-batch): split the request")


def decode_images(uploads: list[tuple[bytes, str]], limits: Limits) -> list[Image.Image]:
    """Decode (bytes, client name) uploads to RGB, all or nothing.

    Every header is read and checked first (format, each image's size, the request's total),
    so no pixel is decoded for a request that will be refused: a decompression bomb costs nothing.
    """
    check_batch(len(uploads), limits)
    total = 0
    for data, name in uploads:
        width, height = _checked_size(data, name, limits)
        total += width * height
    if total > limits.max_request_pixels:
        raise Refused(413, f"the {len(uploads)} images hold {total:,} pixels together; this server takes at most "
                           f"{limits.max_request_pixels:,} in one request: send fewer or smaller images")
    return [_decoded(data, name) for data, name in uploads]


def _opened(data: bytes, name: str) -> Image.Image:
    """PIL's lazy image over ``data`` (the header read, no pixels); 415 when it is no accepted image."""
    shown = display_name(name)
    if not data:
        raise Refused(422, f"{shown} is empty: send the image's bytes")
    try:
        img = Image.open(io.BytesIO(data))
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = "not an image" if isinstance(exc, UnidentifiedImageError) else f"a damaged image ({type(exc).__name__})"
        raise Refused(415, f"{shown} is {kind}; send {', '.join(ACCEPTED_FORMATS)} files") from None
    if img.format not in ACCEPTED_FORMATS:
        img.close()
        raise Refused(415, f"{shown} is a {img.format} file; send {', '.join(ACCEPTED_FORMATS)}")
    return img


def _checked_size(data: bytes, name: str, limits: Limits) -> tuple[int, int]:
    """The image's (width, height) from its header; 413 over the per-image limits."""
    with _opened(data, name) as img:
        width, height = img.size
    if width * height > limits.max_pixels or max(width, height) > limits.max_side:
        raise Refused(413, f"{display_name(name)} is {width}x{height} pixels; this server takes at most "
                           f"{limits.max_pixels:,} pixels and {limits.max_side} per side: shrink it")
    return width, height


def _decoded(data: bytes, name: str) -> Image.Image:
    """The pixels, as RGB (after :func:`_checked_size`); 415 when the data past the header is damaged."""
    try:
        with _opened(data, name) as img:
            img.load()
            return img.convert("RGB")
    except Image.DecompressionBombError:
        raise Refused(413, f"{display_name(name)} is too large to decode safely: shrink it") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise Refused(415, f"{display_name(name)} is a damaged image ({type(exc).__name__}); send "
                           f"{', '.join(ACCEPTED_FORMATS)} files") from None


def display_name(name: str | None) -> str:
    """The client's file name made safe to echo in a message: printable, at most 80 characters."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in (name or ""))[:80]
    return repr(cleaned) if cleaned else "the upload"
