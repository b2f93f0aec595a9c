"""One photo, the same pixels everywhere: the SavedModel, the TFLite path and preprocess's image folders.

The photo is a real CIFAR-100 test image upsampled and encoded as JPEG, once
upright and once stored sideways with the EXIF orientation tag a phone
writes. The model is a small Keras model over every pixel (a pixel that
differs changes its logits), exported by the project's own export code.
"""

from __future__ import annotations

import io
import struct

import numpy as np
import pytest
from PIL import Image, ImageOps

from cifarflow.photo_pixels import SERVING, PhotoPreprocessing, decode_rgb, photo_to_pixels
from tests.serving.images import cifar_test_images


def _photo(pixels: np.ndarray, orientation: int | None = None, size=(240, 180)) -> bytes:
    """A JPEG of the upsampled image; with `orientation`, stored so that tag shows it upright."""
    image = Image.fromarray(pixels).resize(size, Image.Resampling.BICUBIC)
    if orientation is None:
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=90)
        return buffer.getvalue()
    # Store the inverse of what the tag asks a viewer to do.
    inverse = {
        2: [Image.Transpose.FLIP_LEFT_RIGHT],
        3: [Image.Transpose.ROTATE_180],
        4: [Image.Transpose.FLIP_TOP_BOTTOM],
        5: [Image.Transpose.TRANSPOSE],
        6: [Image.Transpose.ROTATE_90],
        7: [Image.Transpose.TRANSVERSE],
        8: [Image.Transpose.ROTATE_270],
    }[orientation]
    for step in inverse:
        image = image.transpose(step)
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=90, exif=exif.tobytes())
    return buffer.getvalue()


@pytest.fixture(scope="module")
def cifar_image() -> np.ndarray:
    images, _ = cifar_test_images()
    return images[3]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(SavedModel folder, TFLite file) of a small seeded model, through the project's export."""
    import keras

    from cifarflow.classes import COARSE_CLASS_NAMES
    from cifarflow.components.train.export import TFLITE_FILE, export_saved_model, export_tflite

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255.0),
            keras.layers.Conv2D(4, 3),
            # The layer every built model ends its trunk with: the explain signature needs it.
            keras.layers.GlobalAveragePooling2D(name="pool"),
            keras.layers.Dense(20),
        ]
    )
    out = tmp_path_factory.mktemp("photo-model")
    export_saved_model(model, out, COARSE_CLASS_NAMES)
    export_tflite(out, out / TFLITE_FILE)
    return out, out / TFLITE_FILE


@pytest.mark.parametrize("orientation", [None, 6], ids=["upright", "exif-6"])
def test_the_saved_model_tflite_and_preprocess_see_the_same_pixels(
    orientation, cifar_image, exported, tmp_path
):
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from cifarflow.components.preprocess.sources import read_image_folder

    saved_model, tflite = exported
    photo = _photo(cifar_image, orientation)
    pixels = photo_to_pixels(photo)
    assert pixels.shape == (32, 32, 3) and pixels.dtype == np.uint8

    loaded = tf.saved_model.load(str(saved_model))
    served = loaded.signatures["serving_default"](image_bytes=tf.constant([photo]))
    from_pixels = loaded.signatures["predict_pixels"](images=tf.constant(pixels[None]))
    # The same graph after the pixels: equal logits mean equal pixels.
    np.testing.assert_array_equal(served["logits"].numpy(), from_pixels["logits"].numpy())

    interpreter = Interpreter(model_path=str(tflite))
    runner = interpreter.get_signature_runner("predict_pixels")
    np.testing.assert_allclose(
        runner(images=pixels[None])["logits"], served["logits"].numpy(), atol=1e-4
    )

    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    (tmp_path / "a" / "photo.jpg").write_bytes(photo)
    (tmp_path / "b" / "photo.jpg").write_bytes(_photo(cifar_image))
    folder = read_image_folder(tmp_path)
    np.testing.assert_array_equal(folder.train.images[0], pixels)


def test_a_sideways_photo_with_its_tag_gives_the_upright_pixels(cifar_image):
    upright = photo_to_pixels(_photo(cifar_image)).astype(int)
    tagged = photo_to_pixels(_photo(cifar_image, 6)).astype(int)
    untagged = photo_to_pixels(
        _photo(cifar_image, 6), PhotoPreprocessing(exif_orientation=False)
    ).astype(int)
    # Not bit-equal (the JPEG blocks fall elsewhere on the stored, rotated pixels), but close.
    assert np.abs(tagged - upright).mean() < 2.0
    assert np.abs(untagged - upright).mean() > 10 * np.abs(tagged - upright).mean()


def test_tensorflow_itself_ignores_the_orientation_tag(cifar_image):
    import tensorflow as tf

    sideways = _photo(cifar_image, 6, size=(240, 180))
    assert tuple(tf.io.decode_jpeg(sideways).shape) == (240, 180, 3)  # stored: rotated
    assert tuple(decode_rgb(tf.constant(sideways)).shape) == (180, 240, 3)  # shown upright


def _app1_exif(orientation: int, big_endian: bool) -> bytes:
    """An EXIF APP1 segment written by hand, one IFD entry (orientation), in either byte order."""
    order = ">" if big_endian else "<"
    tiff = (b"MM" if big_endian else b"II") + struct.pack(order + "HI", 42, 8)
    tiff += struct.pack(order + "H", 1) + struct.pack(order + "HHIHH", 0x0112, 3, 1, orientation, 0)
    tiff += struct.pack(order + "I", 0)
    payload = b"Exif\x00\x00" + tiff
    return b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload


@pytest.mark.parametrize("big_endian", [False, True], ids=["II", "MM"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_orientation_matches_pillow_exif_transpose(orientation, big_endian, cifar_image):
    import tensorflow as tf

    stored = io.BytesIO()
    Image.fromarray(cifar_image).resize((48, 36)).save(stored, "JPEG", quality=95)
    plain = stored.getvalue()
    photo = plain[:2] + _app1_exif(orientation, big_endian) + plain[2:]  # right after SOI
    with Image.open(io.BytesIO(photo)) as image:
        expected = np.asarray(ImageOps.exif_transpose(image).convert("RGB"))
    np.testing.assert_array_equal(decode_rgb(tf.constant(photo)).numpy(), expected)


@pytest.mark.parametrize(
    "segment",
    [
        b"\xff\xe1\x00\x08Exif\x00\x00",  # cut short
        b"\xff\xe1\x00\x10Exif\x00\x00XX*\x00\xff\xff\xff\x7f",  # no byte order, IFD far away
        b"\xff\xe1\x00\x12Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff",  # 65535 entries, none there
    ],
)
def test_a_broken_exif_block_leaves_the_image_as_stored(segment, cifar_image):
    import tensorflow as tf

    stored = io.BytesIO()
    Image.fromarray(cifar_image).save(stored, "JPEG", quality=95)
    plain = stored.getvalue()
    broken = plain[:2] + segment + plain[2:]
    np.testing.assert_array_equal(
        decode_rgb(tf.constant(broken)).numpy(), decode_rgb(tf.constant(plain)).numpy()
    )


def test_a_preprocessing_that_cannot_work_is_refused():
    with pytest.raises(ValueError, match="crop_fraction"):
        PhotoPreprocessing(crop_fraction=0.0)
    with pytest.raises(ValueError, match="method"):
        PhotoPreprocessing(method="sinc")
    assert SERVING.exif_orientation
