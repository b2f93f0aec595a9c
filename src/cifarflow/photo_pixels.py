"""How an encoded photo becomes the model's 32×32 pixels: one definition for every path.

The served SavedModel (`serving_default`), preprocess's image-folder reader
and whoever runs the TFLite file (which holds only `predict_pixels`) all turn
image bytes into pixels with `decode_photo`, so a photo gets the same pixels
wherever it goes. The steps, in order:

1. decode to RGB: JPEG with the accurate integer IDCT (the pixels libjpeg and
   Pillow give by default; `decode_image` would use the fast one); PNG, GIF
   (first frame) and BMP with `tf.io.decode_image`; grey is replicated and
   alpha dropped;
2. turn a JPEG upright by its EXIF orientation tag (phones store portrait
   photos sideways and set the tag; `tf.io.decode_jpeg` ignores it, TF issues
   8430 and 33932), the same eight transforms as Pillow's
   `ImageOps.exif_transpose`;
3. keep the centred `crop_fraction` of each side (1.0: the whole frame);
4. resize to 32×32 (`method`, `antialias`), the aspect ratio not kept;
5. round to whole values in 0..255, as the uint8 training data are.

`SERVING` holds the choice, made by measurement (bench/serving_preprocess.py,
docs/training.md "Robustness"): the whole frame, area-averaged to 32×32.
"""

from __future__ import annotations

import dataclasses

import numpy as np

IMAGE_SIZE = 32
RESIZE_METHODS = ("bilinear", "area", "bicubic", "lanczos3", "nearest")
# EXIF lives in an APP1 segment (at most 64 KiB) before the image data.
_EXIF_SCAN_BYTES = 1 << 17
_MAX_SEGMENTS = 32
_MAX_IFD_ENTRIES = 64
_ORIENTATION_TAG = 0x0112


@dataclasses.dataclass(frozen=True)
class PhotoPreprocessing:
    """One way of turning a decoded photo into 32×32 pixels.

    Attributes:
        crop_fraction: the centred part of each side kept before resizing (1.0: whole frame).
        method: `tf.image.resize` method: bilinear, area, bicubic, lanczos3 or nearest.
        antialias: widen the resize filter when shrinking (ignored by `area`, which averages anyway).
        exif_orientation: turn JPEGs upright by their EXIF orientation tag.
    """

    crop_fraction: float = 1.0
    method: str = "bilinear"
    antialias: bool = True
    exif_orientation: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.crop_fraction <= 1.0:
            raise ValueError(f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.method not in RESIZE_METHODS:
            raise ValueError(
                f"method must be one of {', '.join(RESIZE_METHODS)}, got {self.method!r}"
            )

    @property
    def name(self) -> str:
        """A short label, e.g. `crop1.0-bilinear-aa-exif`.

        >>> PhotoPreprocessing(crop_fraction=0.875, method="area").name
        'crop0.875-area-aa-exif'
        """
        return "-".join(
            [
                f"crop{self.crop_fraction:g}" if self.crop_fraction < 1 else "crop1.0",
                self.method,
                "aa" if self.antialias else "noaa",
                "exif" if self.exif_orientation else "noexif",
            ]
        )


# Area averaging scored best on val photos (65.6 % against 62.2 % for antialiased
# bilinear, whose wider filter blurs); bilinear without antialiasing only
# samples, and falls to 55 % on 224 px photos with sensor noise.
SERVING = PhotoPreprocessing(method="area")


def exif_orientation(image_bytes):
    """The EXIF orientation (1..8) of one encoded JPEG; 1 when absent or unreadable (a TF graph op).

    Walks the JPEG's marker segments up to the image data, finds the `Exif`
    APP1 segment, and reads tag 0x0112 of its first IFD in the TIFF byte order
    it declares. Anything malformed gives 1 (leave the image as stored), as
    Pillow does with a broken EXIF block.
    """
    import tensorflow as tf

    head = tf.io.decode_raw(tf.strings.substr(image_bytes, 0, _EXIF_SCAN_BYTES), tf.uint8)
    data = tf.cast(tf.reshape(head, [-1]), tf.int64)
    size = tf.size(data, out_type=tf.int64)

    def byte(index):
        inside = (index >= 0) & (index < size)
        safe = tf.clip_by_value(index, 0, tf.maximum(size - 1, 0))
        return tf.where(inside, tf.gather(data, safe), tf.constant(-1, tf.int64))

    exif_marker = tf.constant([0x45, 0x78, 0x69, 0x66, 0, 0], tf.int64)  # "Exif\0\0"

    def walking(position, tiff_start, steps):
        return (
            (tiff_start < 0)
            & (steps < _MAX_SEGMENTS)
            & (position + 4 <= size)
            & tf.equal(byte(position), 0xFF)
            & tf.logical_not(tf.reduce_any(tf.equal(byte(position + 1), [0xDA, 0xD9])))
        )

    def next_segment(position, tiff_start, steps):
        is_exif = tf.equal(byte(position + 1), 0xE1) & tf.reduce_all(
            tf.equal(byte(position + 4 + tf.range(6, dtype=tf.int64)), exif_marker)
        )
        tiff_start = tf.where(is_exif, position + 10, tiff_start)
        length = byte(position + 2) * 256 + byte(position + 3)  # big-endian, counts itself
        return position + 2 + tf.maximum(length, 2), tiff_start, steps + 1

    start = (tf.constant(2, tf.int64), tf.constant(-1, tf.int64), tf.constant(0))
    _, tiff, _ = tf.while_loop(walking, next_segment, start)
    little = tf.equal(byte(tiff), 0x49) & tf.equal(byte(tiff + 1), 0x49)  # "II", else "MM"

    def unsigned(index, width):
        """Unsigned integers of `width` bytes at `index` (any shape), in the TIFF byte order."""
        offsets = tf.range(width, dtype=tf.int64)
        values = byte(tf.expand_dims(index, -1) + offsets)
        weights = tf.where(little, 256**offsets, 256 ** (width - 1 - offsets))
        total = tf.reduce_sum(values * weights, axis=-1)
        return tf.where(tf.reduce_all(values >= 0, axis=-1), total, tf.constant(-1, tf.int64))

    ifd = tiff + unsigned(tiff + 4, 4)
    count = unsigned(ifd, 2)
    slots = tf.range(_MAX_IFD_ENTRIES, dtype=tf.int64)
    entries = ifd + 2 + 12 * slots
    match = (slots < count) & tf.equal(unsigned(entries, 2), _ORIENTATION_TAG)
    found = tf.reduce_max(tf.where(match, unsigned(entries + 8, 2), tf.constant(-1, tf.int64)))
    usable = (tiff >= 0) & (found >= 1) & (found <= 8)
    return tf.cast(tf.where(usable, found, 1), tf.int32)


def orient(image, orientation):
    """`image` [H, W, C] turned upright for an EXIF `orientation` 1..8 (a TF graph op).

    The transforms are Pillow's `ImageOps.exif_transpose` ones: 2 mirror,
    3 rotate 180°, 4 flip, 5 transpose, 6 rotate 90° clockwise, 7 transverse,
    8 rotate 90° counter-clockwise.
    """
    import tensorflow as tf

    branches = [
        lambda: image,
        lambda: tf.reverse(image, [1]),
        lambda: tf.reverse(image, [0, 1]),
        lambda: tf.reverse(image, [0]),
        lambda: tf.transpose(image, [1, 0, 2]),
        lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [1]),
        lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [0, 1]),
        lambda: tf.reverse(tf.transpose(image, [1, 0, 2]), [0]),
    ]
    index = tf.clip_by_value(tf.cast(orientation, tf.int32) - 1, 0, 7)
    upright = tf.switch_case(index, branches)
    upright.set_shape([None, None, image.shape[-1]])
    return upright


def decode_rgb(image_bytes, exif: bool = True):
    """One encoded image -> uint8 [H, W, 3], upright when `exif` (a TF graph op)."""
    import tensorflow as tf

    is_jpeg = tf.io.is_jpeg(image_bytes)
    image = tf.cond(
        is_jpeg,
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: tf.io.decode_image(
            image_bytes, channels=3, expand_animations=False, dtype=tf.uint8
        ),
    )
    image.set_shape([None, None, 3])
    if not exif:
        return image
    orientation = tf.cond(is_jpeg, lambda: exif_orientation(image_bytes), lambda: tf.constant(1))
    return orient(image, orientation)


def resize_rgb(image, preprocessing: PhotoPreprocessing = SERVING):
    """Decoded uint8 [H, W, 3] (or a batch [N, H, W, 3]) -> float32 32×32 whole values (a TF graph op)."""
    import tensorflow as tf

    if preprocessing.crop_fraction < 1.0:
        shape = tf.shape(image)
        height, width = shape[-3], shape[-2]
        keep_h = tf.maximum(
            tf.cast(tf.round(tf.cast(height, tf.float32) * preprocessing.crop_fraction), tf.int32),
            1,
        )
        keep_w = tf.maximum(
            tf.cast(tf.round(tf.cast(width, tf.float32) * preprocessing.crop_fraction), tf.int32), 1
        )
        top, left = (height - keep_h) // 2, (width - keep_w) // 2
        image = image[..., top : top + keep_h, left : left + keep_w, :]
    resized = tf.image.resize(
        tf.cast(image, tf.float32),
        [IMAGE_SIZE, IMAGE_SIZE],
        method=preprocessing.method,
        antialias=preprocessing.antialias,
    )
    # The model was trained on whole uint8 values: round like a saved thumbnail would.
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def decode_photo(image_bytes, preprocessing: PhotoPreprocessing = SERVING):
    """One encoded image -> float32 [32, 32, 3] whole pixel values in 0..255 (a TF graph op)."""
    return resize_rgb(decode_rgb(image_bytes, preprocessing.exif_orientation), preprocessing)


_eager_decoders: dict[PhotoPreprocessing, object] = {}


def photo_to_pixels(data: bytes, preprocessing: PhotoPreprocessing = SERVING) -> np.ndarray:
    """Encoded image bytes -> uint8 [32, 32, 3], exactly the pixels the served model sees.

    For callers outside the SavedModel: preprocess's image-folder reader, and
    anyone running the TFLite file (its `predict_pixels` takes these pixels).

    Raises:
        tensorflow.errors.InvalidArgumentError: the bytes are not an image TF decodes.
    """
    import tensorflow as tf

    decoder = _eager_decoders.get(preprocessing)
    if decoder is None:
        decoder = tf.function(
            lambda image_bytes: decode_photo(image_bytes, preprocessing),
            input_signature=[tf.TensorSpec([], tf.string)],
        )
        _eager_decoders[preprocessing] = decoder
    pixels = decoder(tf.constant(data, dtype=tf.string))  # type: ignore[operator]
    return pixels.numpy().astype(np.uint8)
