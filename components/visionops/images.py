"""Decoding image bytes safely: one function used by ingestion, training, serving and labeling.

Limits guard against decompression bombs and absurd inputs; every refusal is an :class:`ImageError` whose
message says what was wrong and whose type carries the HTTP status serving answers with (``http_status``:
400 empty, 413 too large, 415 not a supported image, 422 corrupt or absurd); ingestion quarantines the file
with it.

Memory is bounded by pixels, not by bytes: a 15 KB JPEG can claim 6000x6000 in its header. So the header is
read first (``PIL.Image.open`` reads nothing else) and checked against the per-image pixel limit; a JPEG
bigger than what the caller needs (``target_side``) is decoded in draft mode (the DCT scales it by 1/2, 1/4
or 1/8 while decoding, so a 6000x6000 header becomes a 750x750 array, never 36 megapixels); and a
:class:`PixelBudget` bounds the decoded pixels of a whole request (a batch endpoint).
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

from visionops.errors import EmptyImage, ImageError, ImageTooLarge, UnsupportedImage

SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP")
#: Draft mode keeps at least this many times the needed side, so the bundle's antialiased resize still does
#: the real downscaling: images up to DRAFT_MARGIN x the needed side decode exactly as in training.
DRAFT_MARGIN = 2


@dataclass(frozen=True)
class ImageLimits:
    """Bounds on what we agree to decode."""

    max_bytes: int = 20 * 1024 * 1024
    max_pixels: int = 40_000_000
    min_side: int = 8
    max_side: int = 20_000
    formats: tuple[str, ...] = SUPPORTED_FORMATS
    #: Decoded pixels one request may cost in total (see :class:`PixelBudget`): 150 MB of RGB.
    max_request_pixels: int = 50_000_000

    def request_budget(self) -> PixelBudget:
        """A fresh :class:`PixelBudget` for one request."""
        return PixelBudget(self.max_request_pixels)


DEFAULT_LIMITS = ImageLimits()


class PixelBudget:
    """The decoded pixels one request may cost (a batch endpoint): each image is charged before it decodes.

    Per-image limits alone let 64 images of 36 megapixels through one request; the budget refuses the image
    that would exceed the total, naming the total and the limit, before its pixels exist.
    """

    def __init__(self, max_pixels: int) -> None:
        if max_pixels < 1:
            raise ValueError(f"a pixel budget must be >= 1, got {max_pixels}")
        self.max_pixels = int(max_pixels)
        self.used = 0

    def charge(self, pixels: int, what: str = "image") -> None:
        """Take ``pixels`` from the budget, or raise ImageError (nothing is taken then)."""
        if self.used + pixels > self.max_pixels:
            raise ImageTooLarge(
                f"request has too many pixels: {what} needs {pixels} decoded pixels, the request would reach "
                f"{self.used + pixels} > limit {self.max_pixels} (decoded pixels per request)"
            )
        self.used += pixels


def decode_image(
    data: bytes,
    limits: ImageLimits = DEFAULT_LIMITS,
    *,
    target_side: int | None = None,
    budget: PixelBudget | None = None,
):
    """Decode ``data`` into an RGB ``PIL.Image``, or raise ImageError saying why not.

    The header is checked (format, dimensions, pixel count) before any pixel is decoded, so a
    decompression bomb costs nothing; then the full decode catches truncated and corrupt files.
    ``target_side``: the smallest side the caller needs (the model's resize size); a JPEG more than
    ``DRAFT_MARGIN`` times bigger is decoded in draft mode, downscaled by the decoder. ``budget``: the
    request's :class:`PixelBudget`, charged with the pixels about to be decoded. The original size is kept in
    ``img.info["source_size"]``.
    """
    img, fmt, (width, height) = _open_header(data, limits)
    if fmt == "JPEG" and target_side:
        img.draft("RGB", (target_side * DRAFT_MARGIN, target_side * DRAFT_MARGIN))
    if budget is not None:
        budget.charge(img.size[0] * img.size[1], f"a {width}x{height} image")
    try:
        img.load()
    except Exception as exc:  # PIL raises OSError/SyntaxError/ValueError for truncated or corrupt data
        raise ImageError(f"corrupt or truncated image: {exc}") from exc
    if img.mode != "RGB":
        img = img.convert("RGB")
    img.info["source_format"] = fmt
    img.info["source_size"] = (width, height)
    return img


def _open_header(data: bytes, limits: ImageLimits):
    """Read only the header: (lazy PIL image, format, size), refusing anything outside ``limits``."""
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
        raise ImageTooLarge(
            f"image has too many pixels: its header says {width}x{height} = {width * height} pixels "
            f"> limit {limits.max_pixels} (refused before decoding)"
        )
    if min(width, height) < limits.min_side or max(width, height) > limits.max_side:
        raise ImageError(
            f"absurd image dimensions {width}x{height} (allowed sides {limits.min_side}..{limits.max_side})"
        )
    return img, fmt, (width, height)


def encode_image(img, fmt: str = "JPEG", quality: int = 92) -> bytes:
    """Encode a PIL image to bytes (JPEG by default)."""
    buf = io.BytesIO()
    if fmt.upper() == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=quality)
    else:
        img.save(buf, format=fmt.upper())
    return buf.getvalue()
