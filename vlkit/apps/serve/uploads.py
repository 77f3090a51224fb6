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
    ``max_batch``: images in one request; ``max_top_k``: classes returned per image.
    """

    max_upload_bytes: int = 16 * 1024 * 1024
    max_pixels: int = 16_000_000
    max_side: int = 8192
    max_batch: int = 64

    def check(self) -> "Limits":
        """Refuse limits that would admit nothing (a ValueError naming the field)."""
        for name in ("max_upload_bytes", "max_pixels", "max_side", "max_batch"):
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


def decode_image(data: bytes, name: str, limits: Limits) -> Image.Image:
    """Decode one upload to RGB; refuse non-images (415) and images over the pixel limits (413).

    The size is read from the header and checked before any pixel is decoded, so a
    decompression bomb costs nothing.
    """
    shown = display_name(name)
    if not data:
        raise Refused(422, f"{shown} is empty: send the image's bytes")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ACCEPTED_FORMATS:
                raise Refused(415, f"{shown} is a {img.format} file; send {', '.join(ACCEPTED_FORMATS)}")
            width, height = img.size
            if width * height > limits.max_pixels or max(width, height) > limits.max_side:
                raise Refused(413, f"{shown} is {width}x{height} pixels; this server takes at most "
                                         f"{limits.max_pixels:,} pixels and {limits.max_side} per side: shrink it")
            img.load()
            return img.convert("RGB")
    except Refused:
        raise
    except Image.DecompressionBombError:
        raise Refused(413, f"{shown} is too large to decode safely: shrink it") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, EOFError) as exc:
        kind = "not an image" if isinstance(exc, UnidentifiedImageError) else f"a damaged image ({type(exc).__name__})"
        raise Refused(415, f"{shown} is {kind}; send {', '.join(ACCEPTED_FORMATS)} files") from None


def display_name(name: str | None) -> str:
    """The client's file name made safe to echo in a message: printable, at most 80 characters."""
    cleaned = "".join(ch if ch.isprintable() else "?" for ch in (name or ""))[:80]
    return repr(cleaned) if cleaned else "the upload"
