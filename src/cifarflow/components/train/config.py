"""One trial's hyper-parameters (`TrialConfig`), validated once.

Every field has a default and a range; anything unknown or out of range is
reported in one `BadInputError` that lists every problem. A trial travels
through KFP as a plain JSON dict (see `TrialConfig.to_dict`), where integers
may come back as floats; `from_dict` accepts those. The grids that list
trials are read by `cifarflow.grid`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

from cifarflow.errors import BadInputError

ARCHITECTURES = ("resnet", "densenet121", "resnet50", "xception")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "onecycle", "constant")
MIXED_PRECISION = ("auto", "on", "off")
JIT_COMPILE = ("auto", "on", "off")


@dataclasses.dataclass(frozen=True)
class TrialConfig:
    """Every hyper-parameter of one training run.

    Attributes:
        architecture: "resnet" (from scratch) or a transfer base
            ("densenet121", "resnet50", "xception").
        depth: resnet depth, 6n+2 (8, 14, 20, 32, ...).
        width: resnet width multiplier of the 16-32-64 filter stages.
        input_size: transfer bases: the size images are resized to (2023: 75).
        weights: transfer bases: "imagenet", "none" or a weights file path.
        freeze_base: transfer bases: train only the head.
        size_inner: transfer bases: units of the Dense(relu) layer before the output.
        dropout: dropout rate before the inner layer (transfer) or the output (resnet).
        optimizer: "sgd" (Nesterov momentum), "adam" or "adamw".
        learning_rate: peak learning rate.
        momentum: SGD momentum.
        schedule: "cosine" (linear warm-up, cosine decay to 0), "onecycle"
            (linear up to the peak over `warmup_epochs`, linear down to 0) or "constant".
        warmup_epochs: epochs of linear warm-up (may be fractional).
        weight_decay: coupled L2 on kernels (sgd, adam); decoupled for adamw.
        batch_size: images per step.
        epochs: maximum epochs.
        label_smoothing: cross-entropy label smoothing.
        flip: random horizontal flip.
        crop_padding: random translation by up to this many pixels (pad-and-crop).
        cutout: side of a random erased square (0: off).
        photo_color: per-image brightness (±this × 255), contrast and saturation
            (×[1 - this, 1 + this]) drawn up to this strength (0: off).
        photo_blur: per-image weight, up to this, of a 3×3 blur blended in (0..1; 0: off).
        photo_noise: per-image Gaussian sensor noise, standard deviation up to
            this, in 0..255 levels (0: off). The three photo_* changes are
            `models.photo_augment.RandomPhotoConditions`.
        fine_label_weight: weight of an auxiliary 100-way fine-label head's loss
            (0: off). The served model keeps only the 20 coarse outputs.
        tta_flip: the inference model (and so the served graph) averages the
            logits of each image and its mirror image; twice the inference cost.
        early_stopping_patience: epochs without val-accuracy gain before stopping (0: never).
        time_budget_minutes: wall-clock budget of the training loop (0: none). The
            epochs are planned once from the first measured epochs (never more than
            `epochs`), then only shortened when the forecast overshoots, and the
            learning-rate schedule is shortened with them to end on time.
        mixed_precision: "auto" (on with a GPU or a CPU with native bfloat16), "on" or "off".
        jit_compile: compile the train step (XLA on TensorFlow, jax.jit on JAX):
            "auto" (on a GPU always; on a CPU whichever was measured faster for
            the backend, see `device.CPU_COMPILED_IS_FASTER`), "on" or "off".
        ema_momentum: momentum of an exponential moving average of the weights,
            updated every step (0: off; 0.999 averages over ~1,000 steps). Each
            epoch scores both the live and the averaged weights on val; the
            better one is kept and exported.
        seed: seed of initialisation, shuffling and augmentation.
    """

    architecture: str = "resnet"
    depth: int = 20
    width: int = 1
    input_size: int = 32
    weights: str = "none"
    freeze_base: bool = False
    size_inner: int = 100
    dropout: float = 0.0
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    schedule: str = "cosine"
    warmup_epochs: float = 1.0
    weight_decay: float = 5e-4
    batch_size: int = 128
    epochs: int = 20
    label_smoothing: float = 0.1
    flip: bool = True
    crop_padding: int = 4
    cutout: int = 0
    photo_color: float = 0.0
    photo_blur: float = 0.0
    photo_noise: float = 0.0
    fine_label_weight: float = 0.0
    tta_flip: bool = False
    early_stopping_patience: int = 0
    time_budget_minutes: float = 0.0
    mixed_precision: str = "auto"
    jit_compile: str = "auto"
    ema_momentum: float = 0.0
    seed: int = 0

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "trial") -> TrialConfig:
        """Builds and validates a trial; raises one BadInputError listing every problem."""
        problems: list[str] = []
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(known))
        if unknown:
            problems.append(f"unknown key(s) {', '.join(unknown)} (known: {', '.join(known)})")
        kwargs: dict[str, Any] = {}
        for key, value in values.items():
            if key in known:
                try:
                    # Annotations are strings here (`from __future__ import annotations`).
                    kwargs[key] = _coerce(key, value, str(known[key].type))
                except ValueError as exc:
                    problems.append(str(exc))
        # Fields that failed to convert keep their defaults, so range checks
        # still report the others in the same message.
        config = cls(**kwargs)
        problems.extend(config._range_problems())
        if problems:
            raise BadInputError(f"{where}: " + "; ".join(problems))
        return config

    def to_dict(self) -> dict[str, Any]:
        """All hyper-parameters as a JSON-serialisable dict (the KFP ParallelFor item)."""
        return dataclasses.asdict(self)

    def _range_problems(self) -> list[str]:
        p: list[str] = []

        def check(ok: bool, message: str) -> None:
            if not ok:
                p.append(message)

        check(
            self.architecture in ARCHITECTURES,
            f"architecture must be one of {', '.join(ARCHITECTURES)}, got {self.architecture!r}",
        )
        check(
            self.optimizer in OPTIMIZERS,
            f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {self.optimizer!r}",
        )
        check(
            self.schedule in SCHEDULES,
            f"schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule!r}",
        )
        check(
            self.mixed_precision in MIXED_PRECISION,
            f"mixed_precision must be one of {', '.join(MIXED_PRECISION)}, got {self.mixed_precision!r}",
        )
        check(
            self.jit_compile in JIT_COMPILE,
            f"jit_compile must be one of {', '.join(JIT_COMPILE)}, got {self.jit_compile!r}",
        )
        check(
            0.0 <= self.ema_momentum < 1.0,
            f"ema_momentum must be in [0, 1), got {self.ema_momentum}",
        )
        check(
            self.depth >= 8 and (self.depth - 2) % 6 == 0,
            f"depth must be 6n+2 with n >= 1 (8, 14, 20, ...), got {self.depth}",
        )
        check(1 <= self.width <= 16, f"width must be in 1..16, got {self.width}")
        check(32 <= self.input_size <= 512, f"input_size must be in 32..512, got {self.input_size}")
        check(self.size_inner >= 1, f"size_inner must be >= 1, got {self.size_inner}")
        check(0.0 <= self.dropout < 1.0, f"dropout must be in [0, 1), got {self.dropout}")
        check(
            0.0 < self.learning_rate <= 10.0,
            f"learning_rate must be in (0, 10], got {self.learning_rate}",
        )
        check(0.0 <= self.momentum < 1.0, f"momentum must be in [0, 1), got {self.momentum}")
        check(
            self.warmup_epochs >= 0 and self.warmup_epochs <= self.epochs,
            f"warmup_epochs must be in [0, epochs], got {self.warmup_epochs}",
        )
        check(
            0.0 <= self.weight_decay < 1.0,
            f"weight_decay must be in [0, 1), got {self.weight_decay}",
        )
        check(1 <= self.batch_size <= 8192, f"batch_size must be in 1..8192, got {self.batch_size}")
        check(1 <= self.epochs <= 10_000, f"epochs must be in 1..10000, got {self.epochs}")
        check(
            0.0 <= self.label_smoothing < 1.0,
            f"label_smoothing must be in [0, 1), got {self.label_smoothing}",
        )
        check(
            0 <= self.crop_padding <= 16, f"crop_padding must be in 0..16, got {self.crop_padding}"
        )
        check(0 <= self.cutout <= 32, f"cutout must be in 0..32, got {self.cutout}")
        check(
            0.0 <= self.photo_color <= 1.0, f"photo_color must be in [0, 1], got {self.photo_color}"
        )
        check(0.0 <= self.photo_blur <= 1.0, f"photo_blur must be in [0, 1], got {self.photo_blur}")
        check(
            0.0 <= self.photo_noise <= 64.0,
            f"photo_noise must be in [0, 64] (levels of 0..255), got {self.photo_noise}",
        )
        check(
            self.fine_label_weight >= 0.0,
            f"fine_label_weight must be >= 0, got {self.fine_label_weight}",
        )
        check(
            self.time_budget_minutes >= 0,
            f"time_budget_minutes must be >= 0, got {self.time_budget_minutes}",
        )
        check(
            self.early_stopping_patience >= 0,
            f"early_stopping_patience must be >= 0, got {self.early_stopping_patience}",
        )
        check(bool(self.weights), "weights must be 'imagenet', 'none' or a file path")
        if self.architecture == "resnet" and self.weights != "none":
            p.append(
                "weights applies to transfer architectures only; resnet trains from scratch (use weights: none)"
            )
        return p


def _coerce(key: str, value: Any, annotation: str) -> Any:
    """Converts a YAML/JSON value to the field's type, or raises ValueError."""
    if annotation == "bool":
        if isinstance(value, bool):
            return value
        raise ValueError(f"{key} must be true or false, got {value!r}")
    if annotation == "int":
        # KFP hands ints back as floats (2.0): accept whole floats, nothing else.
        if isinstance(value, bool):
            raise ValueError(f"{key} must be an integer, got {value!r}")
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)
        raise ValueError(f"{key} must be an integer, got {value!r}")
    if annotation == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # YAML reads 1e-4 (no dot) as a string; accept numeric strings.
            if isinstance(value, str):
                try:
                    value = float(value)
                except ValueError:
                    raise ValueError(f"{key} must be a number, got {value!r}") from None
            else:
                raise ValueError(f"{key} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{key} must be finite, got {value!r}")
        return value
    if annotation == "str":
        if isinstance(value, str):
            return value
        raise ValueError(f"{key} must be a string, got {value!r}")
    raise AssertionError(f"unhandled field type {annotation} for {key}")
