"""Property tests of the gateway's image check: whatever the bytes, a 4xx or a checked image, quickly.

tests/serving/test_gateway.py has one example of each bad upload; here
Hypothesis throws arbitrary bytes and mutated real CIFAR-100 test images in
every accepted format at `prepare_image`, and crafted headers that declare
huge dimensions in each format (decompression bombs) must be refused from
the header alone.
"""

from __future__ import annotations

import io
import struct
import time
import zlib
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from cifarflow.serving.errors import PayloadTooLarge, ServingError
from cifarflow.serving.gateway.images import ImageLimits, PreparedImage, prepare_image
from tests.serving.images import cifar_test_images, encode, exif_rotated_jpeg

LIMITS = ImageLimits(max_bytes=1024 * 1024, max_pixels=4_000_000)
SLOW_S = (
    1.5  # far above any legitimate check of these small inputs, even on a loaded 2-core machine
)
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _seeds() -> dict[str, bytes]:
    pixels = cifar_test_images()[0]
    return {
        "png": encode(pixels[0], "PNG"),
        "png-palette": encode(pixels[1], "PNG", mode="P"),
        "png-rgba": encode(pixels[2], "PNG", mode="RGBA"),
        "png-16bit": encode(pixels[3], "PNG", mode="I;16"),
        "jpeg": encode(pixels[4], "JPEG", 64, quality=90),
        "jpeg-progressive": encode(pixels[5], "JPEG", 64, progressive=True),
        "jpeg-exif": exif_rotated_jpeg(pixels[6]),
        "gif": encode(pixels[7], "GIF"),
        "bmp": encode(pixels[8], "BMP"),
        "webp": encode(pixels[9], "WEBP"),
    }


SEEDS = _seeds()


def check(data: bytes) -> PreparedImage | None:
    """prepare_image(data), asserting the only failures are quick 4xx ServingErrors."""
    started = time.monotonic()
    try:
        prepared = prepare_image(data, LIMITS)
    except ServingError as exc:
        assert 400 <= exc.http_status < 500, exc
        prepared = None
    assert time.monotonic() - started < SLOW_S
    return prepared


@FUZZ
@given(st.binary(max_size=4096))
def test_arbitrary_bytes(data):
    prepared = check(data)
    if prepared is not None:  # it did look like an image: what goes on must decode
        Image.open(io.BytesIO(prepared.data)).load()


@st.composite
def mutated(draw) -> bytes:
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(1, 6))):
        at = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["flip", "cut", "insert", "duplicate", "truncate"]))
        if kind == "flip" and at < len(data):
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif kind == "duplicate":
            start = draw(st.integers(0, len(data)))
            data[at:at] = data[start : start + draw(st.integers(1, 256))]
        else:
            del data[at:]
    return bytes(data)


@FUZZ
@given(mutated())
def test_mutated_real_images(data):
    prepared = check(data)
    if prepared is not None:
        image = Image.open(io.BytesIO(prepared.data))
        image.load()
        assert image.format in ("PNG", "JPEG") and image.mode in ("RGB", "L")


def test_every_seed_is_accepted():
    for name, data in SEEDS.items():
        assert check(data) is not None, name


# -- decompression bombs: a few hundred bytes that declare gigapixels ----------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_header(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\0" * 4096, 9))
        + _png_chunk(b"IEND", b"")
    )


def gif_header(width: int, height: int) -> bytes:
    return (
        b"GIF89a"
        + struct.pack("<HH", width, height)
        + b"\x00\x00\x00"
        + b","
        + struct.pack("<HHHH", 0, 0, width, height)
        + b"\x00"
        + b"\x02\x02\x44\x01\x00;"
    )


def bmp_header(width: int, height: int) -> bytes:
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return (
        b"BM" + struct.pack("<IHHI", 14 + len(info) + 64, 0, 0, 14 + len(info)) + info + b"\0" * 64
    )


def jpeg_header(width: int, height: int) -> bytes:
    real = encode(cifar_test_images()[0][0], "JPEG")
    at = real.index(b"\xff\xc0") + 5  # SOF0: length(2) precision(1) height(2) width(2)
    return real[:at] + struct.pack(">HH", height, width) + real[at + 4 :]


def webp_file(width: int, height: int) -> bytes:
    """A real lossless WebP (libwebp rejects a canvas that its bitstream does not fill): one colour packs small."""
    buffer = io.BytesIO()
    Image.new("L", (width, height)).save(buffer, "WEBP", lossless=True)
    return buffer.getvalue()


BOMBS = {"PNG": png_header, "GIF": gif_header, "BMP": bmp_header, "JPEG": jpeg_header}


@pytest.mark.parametrize(
    "fmt, side",
    [
        ("PNG", 60_000),
        ("GIF", 60_000),
        ("BMP", 60_000),
        ("JPEG", 60_000),
        ("PNG", 2**31 - 1),
        ("BMP", 2**31 - 1),
        ("WEBP", 2_100),
    ],
)
def test_a_bomb_in_every_format_is_refused_before_decoding(fmt, side):
    """60,000 squared is 3.6 gigapixels (~11 GB decoded) in a few hundred bytes; the WebP is a real 4.4 MP file."""
    data = webp_file(side, side) if fmt == "WEBP" else BOMBS[fmt](side, side)
    with mock.patch.object(
        Image, "MAX_IMAGE_PIXELS", None
    ):  # PIL's own guard would refuse to even show us
        assert Image.open(io.BytesIO(data)).size == (side, side), (
            "the crafted header is not what PIL reads"
        )
    started = time.monotonic()
    with pytest.raises(PayloadTooLarge, match="pixels"):
        prepare_image(data, LIMITS)
    assert time.monotonic() - started < 0.5
    assert len(data) < 2048


@settings(max_examples=60, deadline=None)
@given(
    fmt=st.sampled_from(sorted(BOMBS)), width=st.integers(1, 65535), height=st.integers(1, 65535)
)
def test_declared_dimensions_decide_before_any_decoding(fmt, width, height):
    data = BOMBS[fmt](width, height)
    started = time.monotonic()
    try:
        prepare_image(data, LIMITS)
        refused = None
    except ServingError as exc:
        refused = exc
    if width * height > LIMITS.max_pixels:
        assert isinstance(refused, PayloadTooLarge) and "pixels" in refused.message, refused
        assert time.monotonic() - started < 0.5
    else:
        assert refused is None or 400 <= refused.http_status < 500
        assert time.monotonic() - started < SLOW_S
