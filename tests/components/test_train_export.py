"""The exported model contract: signatures reloaded in a fresh process agree with the Keras model.

Real images only: sample test images encoded as JPEG, PNG, grayscale PNG,
RGBA PNG, GIF and BMP, plus larger and non-square ones that the graph must
downscale by area averaging.
"""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
from PIL import Image

from cifarflow.calibration import softmax
from cifarflow.classes import COARSE_CLASS_NAMES
from cifarflow.data.splits import load_split

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _encoded_images(sample_data) -> list[tuple[str, bytes]]:
    pixels = np.asarray(load_split(sample_data, "test").images[:8])
    images: list[tuple[str, bytes]] = []

    def encode(name: str, image: Image.Image, fmt: str, **options) -> None:
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        images.append((name, buffer.getvalue()))

    encode("jpeg", Image.fromarray(pixels[0]), "JPEG", quality=95)
    encode("png", Image.fromarray(pixels[1]), "PNG")
    encode("grayscale-png", Image.fromarray(pixels[2]).convert("L"), "PNG")
    rgba = Image.fromarray(pixels[3]).convert("RGBA")
    rgba.putalpha(Image.fromarray(np.full((32, 32), 128, dtype=np.uint8)))
    encode("rgba-png", rgba, "PNG")
    encode("gif", Image.fromarray(pixels[4]).convert("P", palette=Image.Palette.ADAPTIVE), "GIF")
    encode("bmp", Image.fromarray(pixels[5]), "BMP")
    encode(
        "large-png", Image.fromarray(pixels[6]).resize((96, 96), Image.Resampling.BICUBIC), "PNG"
    )
    encode(
        "wide-jpeg",
        Image.fromarray(pixels[7]).resize((80, 48), Image.Resampling.BICUBIC),
        "JPEG",
        quality=90,
    )
    return images


def _area_weights(length: int, size: int = 32) -> np.ndarray:
    """[size, length]: how much of each input pixel falls in each output pixel's box, normalised."""
    scale = length / size
    edges = np.arange(size + 1) * scale
    starts = np.arange(length)
    overlap = np.minimum(edges[1:, None], starts + 1) - np.maximum(edges[:-1, None], starts)
    return np.clip(overlap, 0.0, None) / scale


def _reference_pixels(data: bytes) -> np.ndarray:
    """Independent decode (PIL); other sizes area-averaged to 32x32, from the definition."""
    image = Image.open(io.BytesIO(data))
    image.seek(0)
    rgb = np.asarray(image.convert("RGB"), dtype=np.float64)
    if rgb.shape[:2] != (32, 32):
        rows, cols = _area_weights(rgb.shape[0]), _area_weights(rgb.shape[1])
        rgb = np.clip(np.round(np.einsum("ij,jkc,lk->ilc", rows, rgb, cols)), 0, 255)
    return rgb.astype(np.float32)


_CHILD = textwrap.dedent(
    """
    import base64, json, sys
    import numpy as np
    import tensorflow as tf

    request = json.loads(sys.stdin.read())
    loaded = tf.saved_model.load(request["model"])
    served = loaded.signatures["serving_default"]
    pixels = loaded.signatures["predict_pixels"]
    spec = {name: (s.dtype.name, s.shape.as_list()) for name, s in served.structured_input_signature[1].items()}
    spec_pixels = {name: (s.dtype.name, s.shape.as_list()) for name, s in pixels.structured_input_signature[1].items()}
    out_spec = {name: (s.dtype.name, s.shape.as_list()) for name, s in served.structured_outputs.items()}
    batch = tf.constant([base64.b64decode(b) for b in request["images"]])
    out = served(image_bytes=batch)
    raw = pixels(images=tf.constant(np.array(request["pixels"], dtype=np.uint8)))
    print(json.dumps({
        "spec": spec, "spec_pixels": spec_pixels, "out_spec": out_spec,
        "probabilities": out["probabilities"].numpy().tolist(),
        "logits": out["logits"].numpy().tolist(),
        "class_ids": out["class_ids"].numpy().tolist(),
        "class_names": [n.decode() for n in out["class_names"].numpy()],
        "pixel_probabilities": raw["probabilities"].numpy().tolist(),
    }))
    """
)


def _keras_probabilities(trained_model, pixels: np.ndarray) -> np.ndarray:
    import cifarflow.components.train.models  # noqa: F401  (registers the custom layers)

    model = keras.saving.load_model(trained_model / "model.keras", compile=False)
    temperature = json.loads((trained_model / "train_summary.json").read_text())["temperature"]
    logits = np.asarray(model.predict(pixels, verbose=0), dtype=np.float64)
    return softmax(logits / temperature)


def test_savedmodel_in_a_fresh_process_matches_keras_on_real_images(trained_model, sample_data):
    images = _encoded_images(sample_data)
    raw_pixels = np.asarray(load_split(sample_data, "test").images[:16])
    request = {
        "model": str(trained_model),
        "images": [base64.b64encode(data).decode() for _, data in images],
        "pixels": raw_pixels.tolist(),
    }
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    child = subprocess.run(
        [sys.executable, "-c", _CHILD],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        env=env,
        timeout=180,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    served = json.loads(child.stdout.strip().splitlines()[-1])

    assert served["spec"] == {"image_bytes": ["string", [None]]}
    assert served["spec_pixels"] == {"images": ["uint8", [None, 32, 32, 3]]}
    assert served["out_spec"] == {
        "probabilities": ["float32", [None, 20]],
        "logits": ["float32", [None, 20]],
        "class_ids": ["int64", [None]],
        "class_names": ["string", [None]],
    }
    expected = _keras_probabilities(
        trained_model, np.stack([_reference_pixels(data) for _, data in images])
    )
    probabilities = np.asarray(served["probabilities"])
    for index, (name, _) in enumerate(images):
        np.testing.assert_allclose(probabilities[index], expected[index], atol=2e-4, err_msg=name)
        assert served["class_ids"][index] == int(expected[index].argmax()), name
        assert served["class_names"][index] == COARSE_CLASS_NAMES[served["class_ids"][index]]
    # The served logits carry the temperature: their softmax is the served probabilities.
    np.testing.assert_allclose(
        softmax(np.asarray(served["logits"], dtype=np.float64)), probabilities, atol=1e-5
    )
    np.testing.assert_allclose(
        np.asarray(served["pixel_probabilities"]),
        _keras_probabilities(trained_model, raw_pixels.astype(np.float32)),
        atol=1e-5,
    )


def test_tflite_pixel_signature_matches_keras(trained_model, sample_data):
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(trained_model / "model.tflite"))
    assert list(interpreter.get_signature_list()) == ["predict_pixels"]
    runner = interpreter.get_signature_runner("predict_pixels")
    pixels = np.asarray(load_split(sample_data, "test").images[:16])
    out = runner(images=pixels)
    expected = _keras_probabilities(trained_model, pixels.astype(np.float32))
    np.testing.assert_allclose(out["probabilities"], expected, atol=1e-4)
    np.testing.assert_array_equal(out["class_ids"], expected.argmax(axis=1))


def test_export_only_reexports_a_keras_file(trained_model, tmp_path, capsys):
    """What a model trained on JAX goes through: model.keras + summary in, SavedModel out."""
    import shutil

    from cifarflow.cli.main import main

    folder = tmp_path / "from-gpu"
    folder.mkdir()
    for name in ("model.keras", "train_summary.json"):
        shutil.copy(trained_model / name, folder / name)
    assert main(["train", "--export-only", "--no-tflite", "--out", str(folder)]) == 0
    assert (folder / "saved_model.pb").is_file() and (
        folder / "assets" / "class_names.txt"
    ).is_file()
    assert main(["train", "--export-only", "--out", str(tmp_path / "empty")]) == 2
