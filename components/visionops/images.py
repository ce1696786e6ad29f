"""Decoding image bytes safely: one function used by ingestion, training, serving and labeling.

Limits guard against decompression bombs and absurd inputs; every refusal is an :class:`ImageError` whose
message says what was wrong and whose type carries the HTTP status serving answers with (``http_status``:
400 empty, 413 too large, 415 not a supported image, 422 corrupt or absurd); ingestion quarantines the file
with it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from visionops.errors import EmptyImage, ImageError, ImageTooLarge, UnsupportedImage

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what we agree to decode."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_side: int = 20_000
    formats: tuple[str, ...] = SUPPORTED_FORMATS


DEFAULT_LIMITS = ImageLimits()


def decode_image(data: bytes, limits: ImageLimits = DEFAULT_LIMITS):
    """Decode ``data`` into an RGB ``PIL.Image``, or raise ImageError saying why not.

    The header is checked (format, dimensions, pixel count) before any pixel is decoded, so a
    decompression bomb costs nothing; then the full decode catches truncated and corrupt files.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise EmptyImage("empty image: 0 bytes")
    if len(data) > limits.max_bytes:
        raise ImageTooLarge(f"image too large: {len(data)} bytes > limit {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            width, height = img.size
    except UnidentifiedImageError as exc:
        raise UnsupportedImage(f"not a decodable image (supported: {', '.join(limits.formats)})") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageTooLarge(f"image has too many pixels (decompression bomb guard): {exc}") from exc
    except Exception as exc:
        raise ImageError(f"corrupt or truncated image (bad header): {exc}") from exc
    if fmt not in limits.formats:
        raise UnsupportedImage(f"unsupported image format {fmt!r} (supported: {', '.join(limits.formats)})")
    if width * height > limits.max_pixels:
        raise ImageTooLarge(f"image has too many pixels: {width}x{height} > limit {limits.max_pixels}")
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise ImageError(
            f"absurd image dimensions {width}x{height} (allowed sides {limits.min_side}..{limits.max_side})"
        )
    try:
        img.load()
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError for truncated or corrupt data
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    if img.mode != "RGB":
        img = img.convert("RGB")
    img.info["source_format"] = fmt
    return img


def encode_image(img, fmt: str = "JPEG", quality: int = 92) -> bytes:
    """Encode a PIL image to bytes (JPEG by default)."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=fmt.upper())
    return buf.getvalue()
