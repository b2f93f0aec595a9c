"""What the training runs on: backend, accelerator and the dtype policy."""

from __future__ import annotations

import platform

import keras


def backend() -> str:
    return keras.backend.backend()


def gpu_names() -> list[str]:
    """Names of visible GPUs, asked of whichever backend Keras runs on."""
    name = backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            return [d.name for d in tf.config.list_physical_devices("GPU")]
        if name == "jax":
            import jax

            return [str(d) for d in jax.devices() if d.platform == "gpu"]
        if name == "torch":
            import torch

            return [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    except Exception:  # a broken driver means: no usable GPU
        return []
    return []


def describe_device() -> str:
    gpus = gpu_names()
    if gpus:
        return f"{len(gpus)} GPU ({gpus[0]})"
    import os

    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def dtype_policy(mixed_precision: str) -> str:
    """"mixed_bfloat16" when asked ("on") or when a GPU is present ("auto").

    bfloat16 needs no loss scaling and is native on recent GPUs.
    """
    if mixed_precision == "on" or (mixed_precision == "auto" and gpu_names()):
        return "mixed_bfloat16"
    return "float32"
