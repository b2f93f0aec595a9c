"""The training reference: what the data and the model's scores looked like in training.

`reference.json` travels with the model (candidate folder, then every store
version) so that a monitor can compare live traffic with it: per-channel
pixel statistics and histograms, image-level brightness/contrast/saturation,
the class prior, and the val distribution of two out-of-distribution scores
with a 95 %-pass threshold for each. The definitions live in
`cifarflow.image_statistics` and `cifarflow.ood_scores`; this module only
builds, writes and reads the record.

Who computes what, and why there: evaluate builds the whole record. It
already gets the preprocessed dataset (train split included) and runs the
served graph on val, so the data side (from TRAIN, the data the model learned
from) and the score side (from VAL, held out of training) are computed in one
place and land in the candidate folder with no extra pipeline artifact.
Passing EDA's output to evaluate instead would add an input to every trial's
task for numbers that take a few seconds to compute (5 s for
40,000 images on two busy CPU cores); EDA shows the same
data-side numbers through the same `data_reference` function, so each
statistic has one implementation.

The upload-side fields (original size, aspect ratio, file format) describe
what the model saw in training: 32x32 uint8 arrays decoded from the CIFAR-100
pickles, aspect ratio 1.0, no file format. Their live distribution is filled
in by the gateway from real uploads only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from cifarflow import image_statistics as stats
from cifarflow import ood_scores
from cifarflow.errors import BadInputError

SCHEMA_VERSION = 1
QUANTILE_LEVELS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.999)
DEFAULT_PASS_RATE = 0.95
# What the training arrays are: no encoded file ever reached the model in training.
TRAINING_INPUT_FORMAT = "uint8 array"


@dataclasses.dataclass(frozen=True)
class Histogram:
    """Counts over fixed edges (`len(edges) == len(counts) + 1`); the end bins are open."""

    edges: list[float]
    counts: list[int]

    @classmethod
    def of(cls, values: np.ndarray, edges: np.ndarray) -> Histogram:
        return cls([float(e) for e in edges], stats.bin_counts(values, edges).tolist())

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Histogram:
        return cls([float(e) for e in values["edges"]], [int(c) for c in values["counts"]])


@dataclasses.dataclass(frozen=True)
class Distribution:
    """One scalar feature over a set of images: summary, quantiles and a histogram."""

    count: int
    mean: float
    std: float
    min: float
    max: float
    quantile_levels: list[float]
    quantiles: list[float]
    histogram: Histogram

    @classmethod
    def of(cls, values: np.ndarray, edges: np.ndarray) -> Distribution:
        values = np.asarray(values, dtype=np.float64)
        return cls(
            count=int(values.size),
            mean=float(values.mean()),
            std=float(values.std()),
            min=float(values.min()),
            max=float(values.max()),
            quantile_levels=list(QUANTILE_LEVELS),
            quantiles=np.quantile(values, QUANTILE_LEVELS).tolist(),
            histogram=Histogram.of(values, edges),
        )

    def quantile(self, level: float) -> float:
        """The recorded quantile at `level` (one of QUANTILE_LEVELS)."""
        return self.quantiles[self.quantile_levels.index(level)]

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> Distribution:
        return cls(
            count=int(values["count"]),
            mean=float(values["mean"]),
            std=float(values["std"]),
            min=float(values["min"]),
            max=float(values["max"]),
            quantile_levels=[float(q) for q in values["quantile_levels"]],
            quantiles=[float(q) for q in values["quantiles"]],
            histogram=Histogram.from_json(values["histogram"]),
        )


@dataclasses.dataclass(frozen=True)
class ChannelReference:
    """One RGB channel's pixel values: mean, std (0..255) and a 32-bin histogram."""

    mean: float
    std: float
    histogram: Histogram

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> ChannelReference:
        return cls(
            float(values["mean"]), float(values["std"]), Histogram.from_json(values["histogram"])
        )


@dataclasses.dataclass(frozen=True)
class InputReference:
    """The size and format of the images training saw (uploads: filled by the gateway)."""

    height: int
    width: int
    aspect_ratio: float  # width / height
    format: str


@dataclasses.dataclass(frozen=True)
class DataReference:
    """The data side, from the split the model learned from (train).

    Attributes:
        split: the split's name.
        images: how many images.
        data_sha256: `cifarflow.data.splits.split_checksum` of the split ("" if unknown).
        input: size, aspect ratio and format of those images.
        channels: per RGB channel (keys `R`, `G`, `B`).
        brightness, contrast, saturation: per-image statistics (image_statistics).
        class_counts: images per class, in label order: the class prior.
    """

    split: str
    images: int
    data_sha256: str
    input: InputReference
    channels: dict[str, ChannelReference]
    brightness: Distribution
    contrast: Distribution
    saturation: Distribution
    class_counts: list[int]

    @property
    def class_prior(self) -> list[float]:
        total = sum(self.class_counts)
        return [c / total for c in self.class_counts] if total else []

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> DataReference:
        return cls(
            split=str(values["split"]),
            images=int(values["images"]),
            data_sha256=str(values.get("data_sha256", "")),
            input=InputReference(**values["input"]),
            channels={k: ChannelReference.from_json(v) for k, v in values["channels"].items()},
            brightness=Distribution.from_json(values["brightness"]),
            contrast=Distribution.from_json(values["contrast"]),
            saturation=Distribution.from_json(values["saturation"]),
            class_counts=[int(c) for c in values["class_counts"]],
        )


@dataclasses.dataclass(frozen=True)
class OodScoreReference:
    """One OOD score on val: its distribution and the threshold `pass_rate` of val passes.

    Attributes:
        distribution: the score's val distribution.
        higher_passes: True: an image passes when `score >= threshold`
            (max-softmax); False: when `score <= threshold` (energy).
        pass_rate: the share of val the threshold was set to pass.
        threshold: the threshold (one of the val scores).
        passed: how many val images pass it.
    """

    distribution: Distribution
    higher_passes: bool
    pass_rate: float
    threshold: float
    passed: int

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> OodScoreReference:
        return cls(
            distribution=Distribution.from_json(values["distribution"]),
            higher_passes=bool(values["higher_passes"]),
            pass_rate=float(values["pass_rate"]),
            threshold=float(values["threshold"]),
            passed=int(values["passed"]),
        )


@dataclasses.dataclass(frozen=True)
class ScoreReference:
    """The score side, from the served logits on a held-out split (val).

    Attributes:
        split: the split's name.
        images: how many images.
        data_sha256: checksum of the split ("" if unknown).
        temperature: the temperature the served logits are already divided by.
        predicted_class_counts: predicted class per image, counted in label order.
        scores: `energy` and `max_softmax` (see ood_scores).
    """

    split: str
    images: int
    data_sha256: str
    temperature: float
    predicted_class_counts: list[int]
    scores: dict[str, OodScoreReference]

    @classmethod
    def from_json(cls, values: Mapping[str, Any]) -> ScoreReference:
        return cls(
            split=str(values["split"]),
            images=int(values["images"]),
            data_sha256=str(values.get("data_sha256", "")),
            temperature=float(values["temperature"]),
            predicted_class_counts=[int(c) for c in values["predicted_class_counts"]],
            scores={k: OodScoreReference.from_json(v) for k, v in values["scores"].items()},
        )


@dataclasses.dataclass(frozen=True)
class TrainingReference:
    """`reference.json`: the data side and the score side, with the model's class names."""

    class_names: list[str]
    data: DataReference
    scores: ScoreReference
    schema_version: int = SCHEMA_VERSION

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(
        cls, values: Mapping[str, Any], source: str = "reference.json"
    ) -> TrainingReference:
        """Parses the record.

        Raises:
            BadInputError: another schema version, or a field is missing.
        """
        version = values.get("schema_version")
        if version != SCHEMA_VERSION:
            raise BadInputError(
                f"{source} has schema_version {version!r}; this cifarflow reads {SCHEMA_VERSION}"
            )
        try:
            return cls(
                class_names=[str(n) for n in values["class_names"]],
                data=DataReference.from_json(values["data"]),
                scores=ScoreReference.from_json(values["scores"]),
            )
        except (KeyError, TypeError) as exc:
            raise BadInputError(f"{source} is not a training reference: {exc!r}") from exc

    def brief(self) -> dict[str, Any]:
        """The headline numbers, without histograms (`cifarflow models show`)."""
        d, s = self.data, self.scores
        return {
            "schema_version": self.schema_version,
            "data": f"{d.split}, {d.images} images",
            "channel_mean": {name: round(c.mean, 2) for name, c in d.channels.items()},
            "brightness_mean": round(d.brightness.mean, 2),
            "contrast_mean": round(d.contrast.mean, 2),
            "saturation_mean": round(d.saturation.mean, 4),
            "scores": f"{s.split}, {s.images} images",
            "ood_thresholds": {
                name: {
                    "pass_when": ">=" if ref.higher_passes else "<=",
                    "threshold": ref.threshold,
                    "passed": ref.passed,
                }
                for name, ref in s.scores.items()
            },
        }


def data_reference(
    images: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    split: str = "train",
    data_sha256: str = "",
) -> DataReference:
    """The data side of the reference from one split's uint8 images `[N, H, W, 3]` and labels."""
    if len(images) == 0:
        raise BadInputError(f"the {split} split is empty: no training reference without images")
    height, width = int(images.shape[1]), int(images.shape[2])
    means, stds = stats.channel_moments(images)
    histograms = stats.pixel_histograms(images)
    edges = [float(e) for e in stats.PIXEL_EDGES]
    return DataReference(
        split=split,
        images=int(len(images)),
        data_sha256=data_sha256,
        input=InputReference(height, width, width / height, TRAINING_INPUT_FORMAT),
        channels={
            name: ChannelReference(means[i], stds[i], Histogram(edges, histograms[i].tolist()))
            for i, name in enumerate(stats.CHANNELS)
        },
        brightness=Distribution.of(stats.brightness(images), stats.BRIGHTNESS_EDGES),
        contrast=Distribution.of(stats.contrast(images), stats.CONTRAST_EDGES),
        saturation=Distribution.of(stats.saturation(images), stats.SATURATION_EDGES),
        class_counts=np.bincount(np.asarray(labels, np.int64), minlength=num_classes).tolist(),
    )


def score_reference(
    logits: np.ndarray,
    temperature: float,
    split: str = "val",
    data_sha256: str = "",
    pass_rate: float = DEFAULT_PASS_RATE,
) -> ScoreReference:
    """The score side from the served (temperature-scaled) logits `[N, C]` of a held-out split."""
    logits = np.asarray(logits, dtype=np.float64)
    if len(logits) == 0:
        raise BadInputError(f"the {split} split is empty: no OOD thresholds without images")
    scores = {}
    for name in ood_scores.SCORES:
        values = ood_scores.score(name, logits)
        higher = ood_scores.HIGHER_PASSES[name]
        threshold = ood_scores.pass_threshold(values, pass_rate, higher)
        scores[name] = OodScoreReference(
            distribution=Distribution.of(values, ood_scores.SCORE_EDGES[name]),
            higher_passes=higher,
            pass_rate=pass_rate,
            threshold=threshold,
            passed=int(ood_scores.passes(name, values, threshold).sum()),
        )
    return ScoreReference(
        split=split,
        images=int(len(logits)),
        data_sha256=data_sha256,
        temperature=float(temperature),
        predicted_class_counts=np.bincount(
            logits.argmax(axis=1), minlength=logits.shape[1]
        ).tolist(),
        scores=scores,
    )


def training_reference(
    class_names: Sequence[str], data: DataReference, scores: ScoreReference
) -> TrainingReference:
    """The whole record; checks that both sides agree with the class names."""
    if len(data.class_counts) != len(class_names) or len(scores.predicted_class_counts) != len(
        class_names
    ):
        raise BadInputError("the reference's class counts do not match the model's classes")
    return TrainingReference(list(class_names), data, scores)
