"""Checking an uploaded image before it reaches the model, and fixing what TF would get wrong.

Checks, each a 4xx with a message: empty, too many bytes (413), not an image
(400), a format the model does not decode (415), too many pixels (413, read
from the header before decoding: decompression bombs), truncated or corrupt
(400). One undecodable image would fail a whole server-side batch, so
nothing unchecked is sent on.

The model decodes in its graph, so an ordinary RGB or grayscale JPEG/PNG is
passed through byte for byte (training and serving see the same decoder).
What TensorFlow's decoder would get wrong is normalised here and re-encoded
as PNG: EXIF orientation (TF ignores it), transparency (composited on white
rather than dropped to whatever colour hides under alpha 0), palette, CMYK,
16-bit and other modes, and animated or non-JPEG/PNG formats.

For the drift monitor, `prepare_image` can also hand back a thumbnail near
the training size, from the pixels it decoded for the checks anyway (a JPEG
at reduced scale), so the monitor decodes nothing.
"""

from __future__ import annotations

import dataclasses
import io
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from cifarflow.serving.errors import InvalidInput, PayloadTooLarge, UnsupportedMediaType

SUPPORTED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP")
_PASS_THROUGH_FORMATS = {"JPEG", "PNG"}
_PASS_THROUGH_MODES = {"RGB", "L"}
# Re-encoded images are shrunk to this side first: the model resizes to 32x32
# anyway, and a lossless PNG of a large photo would be tens of megabytes.
_MAX_NORMALISED_SIDE = 512
_ORIENTATION = 0x0112
_WIDE_GRAY_MODES = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


@dataclasses.dataclass(frozen=True)
class ImageLimits:
    max_bytes: int = 8 * 1024 * 1024
    max_pixels: int = 40_000_000


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """What goes to the model, and what was found on the way."""

    data: bytes
    format: str
    width: int
    height: int
    normalised: bool
    thumbnail: Image.Image | None = None  # near the model's size, any mode, when asked for


def prepare_image(
    data: bytes, limits: ImageLimits, pixels_side: int | None = None
) -> PreparedImage:
    """Validates `data` and returns bytes the model decodes correctly.

    Args:
        data: the uploaded or fetched file.
        limits: byte and pixel limits.
        pixels_side: also return a thumbnail for the drift monitor, box-reduced
            by whole factors to `pixels_side`..`2 * pixels_side - 1` a side
            (exactly the pixels of an image of that size; an upright JPEG is
            first decoded at the DCT scale nearest above that side). In the
            image's own mode: the monitor turns it into RGB off the request path.

    Raises:
        InvalidInput: empty, not an image, truncated or corrupt.
        PayloadTooLarge: too many bytes or pixels.
        UnsupportedMediaType: an image format the service does not take.
    """
    if not data:
        raise InvalidInput("empty image: the upload has no bytes")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes; the limit is {limits.max_bytes} bytes")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # we check pixels ourselves
        try:
            image = Image.open(io.BytesIO(data))
        except UnidentifiedImageError:
            raise InvalidInput(
                "not an image: the bytes are not a format the service recognises "
                f"(send {', '.join(SUPPORTED_FORMATS)})"
            ) from None
        except Image.DecompressionBombError as exc:
            raise PayloadTooLarge(f"image has too many pixels: {exc}") from None
        except (OSError, SyntaxError, ValueError) as exc:
            raise InvalidInput(f"corrupt image header: {exc}") from None
        fmt = image.format or "unknown"
        if fmt not in SUPPORTED_FORMATS:
            raise UnsupportedMediaType(
                f"unsupported image format {fmt}: send {', '.join(SUPPORTED_FORMATS)}"
            )
        width, height = image.size
        if width * height > limits.max_pixels:
            raise PayloadTooLarge(
                f"image is {width}x{height} = {width * height} pixels; the limit is {limits.max_pixels}"
            )
        if width == 0 or height == 0:
            raise InvalidInput("image has no pixels")
        mode = image.mode
        try:
            jpeg_orientation = _orientation(image) if fmt == "JPEG" else None
            if fmt == "JPEG":
                # A reduced-scale decode still reads every byte (so it catches
                # truncation) at a fraction of the cost of a full decode.
                upright = mode in _PASS_THROUGH_MODES and jpeg_orientation in (0, 1)
                # Upright, the pixels serve only the drift monitor: decode at the
                # scale closest above its side (the DCT scales by 1/2, 1/4, 1/8).
                side = (pixels_side or 256) if upright else _MAX_NORMALISED_SIDE
                image.draft(mode if mode in _PASS_THROUGH_MODES else "RGB", (side, side))
            image.load()
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise InvalidInput(f"truncated or corrupt {fmt} image: {exc}") from None
        # Only after load() for the other formats: PNG's getexif() loads the
        # pixels itself, and the except in _orientation would hide a corrupt stream.
        orientation = jpeg_orientation if jpeg_orientation is not None else _orientation(image)
        pass_through = (
            fmt in _PASS_THROUGH_FORMATS and mode in _PASS_THROUGH_MODES and orientation in (0, 1)
        )
        if pass_through:
            small = _thumbnail(image, pixels_side) if pixels_side else None
            return PreparedImage(data, fmt, width, height, normalised=False, thumbnail=small)
        rgb = _upright_rgb(image)
        small = _thumbnail(rgb, pixels_side) if pixels_side else None
        return PreparedImage(_encode_png(rgb), fmt, width, height, normalised=True, thumbnail=small)


def _thumbnail(image: Image.Image, side: int) -> Image.Image:
    """A new image, box-averaged by whole factors until each side is in [side, 2 * side).

    Not the model's exact resize (area averaging to side x side): a
    whole-factor box reduction is several times cheaper, and the statistics
    the monitor takes (means, spreads, histograms) barely depend on the
    difference (docs/monitoring.md). A new image without the file's
    metadata, so nothing of the upload stays referenced while the thumbnail
    waits in the monitor's queue (an opened PNG keeps its file).
    """
    width, height = image.size
    factors = (max(1, width // side), max(1, height // side))
    small = image.reduce(factors) if factors != (1, 1) else image.copy()
    small.info = {}
    return small


def _orientation(image: Image.Image) -> int:
    try:
        return image.getexif().get(_ORIENTATION, 1)
    except Exception:  # a broken EXIF block: ignore it like TF does
        return 1


def _upright_rgb(image: Image.Image) -> Image.Image:
    """The image upright, in RGB, transparency on white, at most _MAX_NORMALISED_SIDE wide."""
    image = ImageOps.exif_transpose(image)  # applies and drops the EXIF orientation
    if image.mode in _WIDE_GRAY_MODES:
        # 16-bit grayscale: PIL's convert() would clip every value above 255 to white.
        wide = np.asarray(image, dtype=np.float64)
        image = Image.fromarray(np.clip(np.round(wide / 257.0), 0, 255).astype(np.uint8), "L")
    if image.mode in ("P", "PA") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "RGBa", "La"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    image = image.convert("RGB")
    if max(image.size) > _MAX_NORMALISED_SIDE:
        image.thumbnail(
            (_MAX_NORMALISED_SIDE, _MAX_NORMALISED_SIDE), Image.Resampling.LANCZOS
        )  # antialiased
    return image


def _encode_png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", compress_level=1)
    return buffer.getvalue()
