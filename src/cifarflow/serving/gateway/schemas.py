"""The gateway REST API's request and response bodies, from which FastAPI writes its OpenAPI description."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from cifarflow.classes import COARSE_CLASS_NAMES

ClassName = Literal[tuple(COARSE_CLASS_NAMES)]  # type: ignore[valid-type]
Probability = Field(ge=0, le=1)
TOP_K = "how many classes to return (default 5)"


class Error(BaseModel):
    """A refused request; the status names the cause."""

    error: str
    request_id: str = Field("", description="the request's X-Request-ID")


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    class_: ClassName = Field(alias="class")  # type: ignore[valid-type]
    probability: float = Probability


class Ood(BaseModel):
    """How unlike the training images this one looks (docs/monitoring.md)."""

    score: Literal["energy", "max_softmax"] = Field(
        description="energy: lower is more like training; max_softmax: higher is"
    )
    value: float
    threshold: float | None = Field(
        None,
        description="the served version's threshold (95 % of val images pass); absent when "
        "the version has no training reference",
    )
    in_distribution: bool | None = Field(
        None,
        description="false: the image looks unlike anything the model was trained on; "
        "absent when the version has no training reference",
    )


class Classification(BaseModel):
    """The top classes, most probable first."""

    model: str
    version: int
    predictions: list[Prediction] = Field(min_length=1, max_length=len(COARSE_CLASS_NAMES))
    ood: Ood | None = Field(None, description="absent when the gateway runs with --monitors off")


SALIENCY_SIZE = 32


class Explanation(BaseModel):
    """Why the model answered its top class: a Grad-CAM saliency map over the image."""

    model_config = ConfigDict(populate_by_name=True)

    model: str
    version: int
    class_: ClassName = Field(alias="class", description="the class explained: the model's answer")  # type: ignore[valid-type]
    probability: float = Probability
    saliency: list[list[float]] = Field(
        min_length=SALIENCY_SIZE,
        max_length=SALIENCY_SIZE,
        description=(
            "32 rows of 32 values in [0, 1], row 0 at the top, rounded to 3 decimals: how much each "
            "region raised the class's score (1: the most). It covers the whole image as the model "
            "saw it, squeezed to a square."
        ),
    )
    predictions: list[Prediction] = Field(min_length=1, max_length=len(COARSE_CLASS_NAMES))


# `/predict` answers every class by name; names such as "large_man-made_..." are no identifiers.
ClassScores = create_model(  # type: ignore[call-overload]
    "ClassScores",
    __config__=ConfigDict(extra="forbid", populate_by_name=True),
    __doc__="class name -> probability, all 20 classes",
    **{
        name.replace("-", "_"): (float, Field(ge=0, le=1, alias=name))
        for name in COARSE_CLASS_NAMES
    },
)


class ClassifyJson(BaseModel):
    """`/v1/classify` with the image in JSON."""

    image_b64: str = Field(
        json_schema_extra={"format": "byte"}, description="base64 image, or a data: URL"
    )
    top_k: int | None = Field(None, ge=0, le=20, description="0 or null: the default (5)")


class ClassifyForm(BaseModel):
    """`/v1/classify` as a multipart form."""

    file: bytes = Field(
        json_schema_extra={"format": "binary"}, description="JPEG, PNG, GIF, BMP or WEBP"
    )
    top_k: int = Field(None, ge=1, le=20, description=TOP_K)  # type: ignore[assignment]


class PredictUrl(BaseModel):
    """The 2023 contract: an image by URL (allow-listed hosts only)."""

    url: str = Field(max_length=2048)


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    model: str
    version: int


class Info(BaseModel):
    """What the web page needs to know."""

    model: str
    url_fetching: bool
    auth: bool
    max_image_bytes: int
    default_top_k: int
