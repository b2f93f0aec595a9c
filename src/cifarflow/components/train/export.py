"""Writes the servable SavedModel (and TFLite) of a trained Keras model.

This is the one training module that uses TensorFlow: the signatures of the
model contract (docs/training.md, "Signatures") are TensorFlow graphs.

- `serving_default(image_bytes: string[None])`: decodes JPEG/PNG/GIF/BMP to
  RGB (grayscale is replicated, alpha is dropped, a GIF gives its first
  frame), turns a JPEG upright by its EXIF orientation, resizes to 32×32 as
  `cifarflow.photo_pixels.SERVING` says (chosen by measurement), rounds to
  whole pixel values like the uint8 training data, and runs the model.
- `predict_pixels(images: uint8[None, 32, 32, 3])`: the model on raw pixels.
- `explain(image_bytes: string[None])`: the same decoding, then a Grad-CAM
  saliency map of the predicted class (saliency.py): `saliency` float32
  [None, 32, 32] in [0, 1], `probability` float32 [None] (the explained
  class's), and the four outputs below.

All three return `probabilities` (softmax of the temperature-scaled logits),
`logits` (already divided by the fitted temperature, so
`softmax(logits) == probabilities`), `class_ids` (int64) and `class_names`.
Nothing is rejected in the graph: the serving layer rejects empty batches and
undecodable images before they reach it.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path

import keras

from cifarflow import photo_pixels
from cifarflow.atomic_files import write_bytes_atomic
from cifarflow.components.train.saliency import grad_cam, grad_cam_model

TFLITE_FILE = "model.tflite"
SAVED_MODEL_FILES = ("saved_model.pb", "variables", "assets", "fingerprint.pb")
CLASS_NAMES_ASSET = "class_names.txt"
IMAGE_SIZE = photo_pixels.IMAGE_SIZE
EXPLAIN_SIGNATURE = "explain"


def _require_tensorflow_backend() -> None:
    if keras.backend.backend() != "tensorflow":
        raise RuntimeError(
            f"the SavedModel export needs KERAS_BACKEND=tensorflow (running {keras.backend.backend()}); "
            "export the trained model.keras with `cifarflow train --export-only --out DIR`"
        )


def decode_and_resize(image_bytes):
    """One encoded image -> float32 [32, 32, 3] pixel values in 0..255 (a TF graph op).

    The steps and their measured choice live in `cifarflow.photo_pixels`, the
    one definition preprocess's image folders and TFLite callers use too.
    """
    return photo_pixels.decode_photo(image_bytes, photo_pixels.SERVING)


def export_saved_model(
    model: keras.Model,
    out_dir: str | os.PathLike,
    class_names: Sequence[str],
    temperature: float = 1.0,
) -> None:
    """Writes the SavedModel files into `out_dir` (beside whatever else is there).

    The archive is written to a temporary folder and its entries are moved in,
    so a kill never leaves a half-written `saved_model.pb` behind.
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    out = Path(out_dir)
    tmp = out / ".saved_model.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    names = tf.constant(list(class_names))
    inverse_t = 1.0 / float(temperature)

    def outputs(pixels):
        return outputs_of_logits(tf.cast(model(pixels, training=False), tf.float32) * inverse_t)

    def outputs_of_logits(logits):
        class_ids = tf.argmax(logits, axis=1, output_type=tf.int64)
        return {
            "probabilities": tf.nn.softmax(logits),
            "logits": logits,
            "class_ids": class_ids,
            "class_names": tf.gather(names, class_ids),
        }

    def serve_bytes(image_bytes):
        pixels = tf.map_fn(
            decode_and_resize,
            image_bytes,
            fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
        )
        return outputs(pixels)

    def predict_pixels(images):
        return outputs(tf.cast(images, tf.float32))

    # Not `archive.track(model)`: add_endpoint already saves the variables an
    # endpoint uses, and track() is for other resources such as lookup tables
    # (its docstring, Keras 3.15.1), which these models have none of. It only
    # added the Keras object graph to the save: DenseNet121's export took
    # 55 s with it and 40 s without, with the same outputs.
    archive = keras.export.ExportArchive()
    archive.add_endpoint(
        "serving_default",
        serve_bytes,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.add_endpoint(
        "predict_pixels",
        predict_pixels,
        input_signature=[tf.TensorSpec([None, IMAGE_SIZE, IMAGE_SIZE, 3], tf.uint8, name="images")],
    )
    cam_model = grad_cam_model(model)

    def explain(image_bytes):
        pixels = tf.map_fn(
            decode_and_resize,
            image_bytes,
            fn_output_signature=tf.TensorSpec([IMAGE_SIZE, IMAGE_SIZE, 3], tf.float32),
        )
        saliency, logits = grad_cam(cam_model, pixels)
        answer = outputs_of_logits(logits * inverse_t)
        answer["saliency"] = saliency
        answer["probability"] = tf.gather(
            answer["probabilities"], answer["class_ids"], batch_dims=1
        )
        return answer

    archive.add_endpoint(
        EXPLAIN_SIGNATURE,
        explain,
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")],
    )
    archive.write_out(str(tmp), verbose=False)
    (tmp / "assets").mkdir(exist_ok=True)
    (tmp / "assets" / CLASS_NAMES_ASSET).write_text("\n".join(class_names) + "\n")
    for name in SAVED_MODEL_FILES:
        target = out / name
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    # saved_model.pb moves last: a folder with it has the variables it needs.
    for entry in sorted(tmp.iterdir(), key=lambda p: p.name == "saved_model.pb"):
        os.replace(entry, out / entry.name)
    tmp.rmdir()


def export_tflite(saved_model_dir: str | os.PathLike, path: str | os.PathLike) -> None:
    """Converts the `predict_pixels` signature to TFLite (decoding is not a builtin op).

    Whoever runs the file decodes the photo first, with
    `cifarflow.photo_pixels.photo_to_pixels`, so it gets the pixels
    `serving_default` would (docs/training.md, "Robustness").
    """
    _require_tensorflow_backend()
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(
        str(saved_model_dir), signature_keys=["predict_pixels"]
    )
    # class_names is a string gather; let TFLite fall back to TF ops where needed.
    converter.target_spec.supported_ops = [
        tf.lite.OpsSet.TFLITE_BUILTINS,
        tf.lite.OpsSet.SELECT_TF_OPS,
    ]
    data = converter.convert()
    write_bytes_atomic(path, data)


def export_model_folder(out_dir: str | os.PathLike, tflite: bool = True) -> None:
    """(Re-)exports a trial folder's `model.keras` as SavedModel (+ TFLite).

    For models trained on another backend (JAX on a GPU machine): run this
    with KERAS_BACKEND=tensorflow. Class names and temperature come from the
    folder's `train_summary.json`.
    """
    from cifarflow.components import candidate as contract
    from cifarflow.errors import BadInputError

    out = Path(out_dir)
    summary = contract.TrainSummary.read(out)
    if not (out / contract.KERAS_FILE).is_file() or summary is None:
        raise BadInputError(
            f"{out} has no {contract.KERAS_FILE} and {contract.TRAIN_SUMMARY_FILE}: it is not a finished trial"
        )
    _require_tensorflow_backend()
    # Importing the training package registers the custom layers for loading.
    import cifarflow.components.train.models  # noqa: F401

    model = keras.saving.load_model(out / contract.KERAS_FILE, compile=False)
    export_saved_model(model, out, summary.class_names, summary.temperature)
    if tflite:
        export_tflite(out, out / TFLITE_FILE)
