"""Mixed precision "auto": bfloat16 only where the hardware computes it natively."""

from __future__ import annotations

import pytest

from cifarflow.components.train import device
from cifarflow.components.train.device import Gpu, choose_dtype_policy

A100, L4, H200 = Gpu("A100", (8, 0)), Gpu("L4", (8, 9)), Gpu("H200", (9, 0))
T4, V100, P100 = Gpu("T4", (7, 5)), Gpu("V100", (7, 0)), Gpu("P100", (6, 0))


@pytest.mark.parametrize("gpu", [A100, L4, H200], ids=lambda g: g.name)
def test_auto_picks_bfloat16_on_ampere_and_newer(gpu):
    assert choose_dtype_policy("auto", [gpu], cpu_native_bfloat16=False) == "mixed_bfloat16"


@pytest.mark.parametrize("gpu", [T4, V100, P100, Gpu("unknown")], ids=lambda g: g.name)
def test_auto_keeps_float32_on_gpus_without_bfloat16_units(gpu):
    # A native-bfloat16 CPU does not matter: the training runs on the GPU.
    assert choose_dtype_policy("auto", [gpu], cpu_native_bfloat16=True) == "float32"


def test_auto_needs_every_gpu_to_be_native():
    assert choose_dtype_policy("auto", [A100, T4], cpu_native_bfloat16=False) == "float32"


def test_auto_on_cpu_follows_the_cpu():
    assert choose_dtype_policy("auto", [], cpu_native_bfloat16=True) == "mixed_bfloat16"
    assert choose_dtype_policy("auto", [], cpu_native_bfloat16=False) == "float32"


def test_on_and_off_are_obeyed():
    assert choose_dtype_policy("on", [T4], cpu_native_bfloat16=False) == "mixed_bfloat16"
    assert choose_dtype_policy("off", [A100], cpu_native_bfloat16=True) == "float32"


@pytest.mark.parametrize(
    "reported, parsed",
    [
        ((8, 0), (8, 0)),
        ([7, 5], (7, 5)),
        ("9.0", (9, 0)),
        ("8.6", (8, 6)),
        ("8", (8, 0)),
        (None, None),
        ("sm_80", None),
    ],
)
def test_compute_capability_as_each_backend_reports_it(reported, parsed):
    # TensorFlow's get_device_details and PyTorch give tuples, JAX a "major.minor" string.
    assert device._capability(reported) == parsed


def test_dtype_policy_asks_the_detected_devices(monkeypatch):
    monkeypatch.setattr(device, "gpus", lambda: [T4])
    assert device.dtype_policy("auto") == "float32"
    monkeypatch.setattr(device, "gpus", lambda: [L4])
    assert device.dtype_policy("auto") == "mixed_bfloat16"
    assert device.gpu_names() == ["L4"]
