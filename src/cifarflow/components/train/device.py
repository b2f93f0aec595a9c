"""What the training runs on: backend, accelerator and the dtype policy."""

from __future__ import annotations

import dataclasses
import platform
from collections.abc import Sequence

import keras


def backend() -> str:
    return keras.backend.backend()


@dataclasses.dataclass(frozen=True)
class Gpu:
    """One visible GPU.

    Attributes:
        name: as the backend names it.
        compute_capability: CUDA (major, minor), e.g. (8, 0) for an A100;
            None when the backend does not say (then it is not trusted with
            bfloat16).
    """

    name: str
    compute_capability: tuple[int, int] | None = None


def _capability(value: object) -> tuple[int, int] | None:
    """(major, minor) from a tuple (TensorFlow, PyTorch) or a "8.0" string (JAX)."""
    try:
        if isinstance(value, str):
            major, _, minor = value.partition(".")
            return int(major), int(minor or 0)
        if isinstance(value, (tuple, list)) and len(value) == 2:
            return int(value[0]), int(value[1])
    except (TypeError, ValueError):
        pass
    return None


def gpus() -> list[Gpu]:
    """Visible GPUs and their compute capabilities, asked of whichever backend Keras runs on."""
    name = backend()
    try:
        if name == "tensorflow":
            import tensorflow as tf

            found = []
            for device in tf.config.list_physical_devices("GPU"):
                details = tf.config.experimental.get_device_details(device)
                found.append(
                    Gpu(
                        details.get("device_name", device.name),
                        _capability(details.get("compute_capability")),
                    )
                )
            return found
        if name == "jax":
            import jax

            return [
                Gpu(str(d), _capability(getattr(d, "compute_capability", None)))
                for d in jax.devices()
                if d.platform == "gpu"
            ]
        if name == "torch":
            import torch

            return [
                Gpu(torch.cuda.get_device_name(i), _capability(torch.cuda.get_device_capability(i)))
                for i in range(torch.cuda.device_count())
            ]
    except Exception:  # a broken driver means: no usable GPU
        return []
    return []


def gpu_names() -> list[str]:
    """Names of visible GPUs."""
    return [gpu.name for gpu in gpus()]


def describe_device() -> str:
    gpus = gpu_names()
    if gpus:
        return f"{len(gpus)} GPU ({gpus[0]})"
    import os

    return f"CPU ({os.cpu_count()} cores, {platform.machine()})"


def cpu_has_native_bfloat16() -> bool:
    """Whether the CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo.

    On such CPUs oneDNN runs bfloat16 convolutions about twice as fast as
    float32 (measured 928 vs 498 img/s for ResNet-20 on two EPYC cores); on
    others bfloat16 is emulated and slower, so anything unreadable means no.
    """
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return bool(flags & {"avx512_bf16", "amx_bf16"})
    except OSError:
        return False
    return False


# bfloat16 tensor cores arrived with Ampere (compute capability 8.0: A100,
# A10, L4, RTX 30xx and later). Older GPUs (T4 7.5, V100 7.0, P100 6.0) have
# no bfloat16 units: there it is emulated or refused, slower than float32.
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)


def choose_dtype_policy(
    mixed_precision: str, gpus: Sequence[Gpu], cpu_native_bfloat16: bool
) -> str:
    """The decision of `dtype_policy`, on device details given to it.

    Args:
        mixed_precision: "on", "off" or "auto".
        gpus: the visible GPUs; training runs on them when there are any.
        cpu_native_bfloat16: whether the CPU's kernels use native bfloat16
            units (only looked at without a GPU).

    Returns:
        "mixed_bfloat16" when asked ("on"), or ("auto") when every GPU is at
        least compute capability 8.0, or when there is no GPU and the CPU is
        native; "float32" otherwise.
    """
    if mixed_precision == "on":
        return "mixed_bfloat16"
    if mixed_precision == "auto":
        if gpus:
            native = all(
                g.compute_capability is not None
                and g.compute_capability >= BF16_MIN_COMPUTE_CAPABILITY
                for g in gpus
            )
            return "mixed_bfloat16" if native else "float32"
        if cpu_native_bfloat16:
            return "mixed_bfloat16"
    return "float32"


def dtype_policy(mixed_precision: str) -> str:
    """The Keras dtype policy for this machine (see `choose_dtype_policy`).

    bfloat16 needs no loss scaling. On CPUs only the TensorFlow backend's
    oneDNN kernels are known to use the native units.
    """
    if mixed_precision != "auto":
        return choose_dtype_policy(mixed_precision, [], False)
    found = gpus()
    cpu_native = not found and backend() == "tensorflow" and cpu_has_native_bfloat16()
    return choose_dtype_policy(mixed_precision, found, cpu_native)


# Whether the compiled train step beat the uncompiled one on a CPU, per
# backend, measured side by side with `bench/gpu_probe.py --config cpu`
# (bench/results/jit_compile_cpu.json). On a GPU compiling always wins.
CPU_COMPILED_IS_FASTER = {"tensorflow": False, "jax": True}


def choose_jit_compile(jit_compile: str, on_gpu: bool, backend_name: str) -> bool:
    """The decision of `use_jit_compile`, on device details given to it.

    Args:
        jit_compile: "on", "off" or "auto".
        on_gpu: whether training runs on a GPU.
        backend_name: the Keras backend ("tensorflow", "jax", "torch").

    Returns:
        True to compile the train step (XLA on TensorFlow, jax.jit on JAX):
        when asked, or ("auto") on a GPU, or on a CPU where compiling was
        measured faster for this backend.
    """
    if jit_compile != "auto":
        return jit_compile == "on"
    if on_gpu:
        return True
    return CPU_COMPILED_IS_FASTER.get(backend_name, False)


def use_jit_compile(jit_compile: str) -> bool:
    """Whether this machine compiles the train step (see `choose_jit_compile`)."""
    if jit_compile != "auto":
        return choose_jit_compile(jit_compile, False, backend())
    return choose_jit_compile(jit_compile, bool(gpus()), backend())
