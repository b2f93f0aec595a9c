from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("image", "url", "top_k")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    url: str
    top_k: int
    def __init__(self, image: _Optional[bytes] = ..., url: _Optional[str] = ..., top_k: _Optional[int] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("class_name", "probability", "class_id")
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    class_name: str
    probability: float
    class_id: int
    def __init__(self, class_name: _Optional[str] = ..., probability: _Optional[float] = ..., class_id: _Optional[int] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("model", "version", "predictions", "request_id", "ood")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    OOD_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    request_id: str
    ood: Ood
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., request_id: _Optional[str] = ..., ood: _Optional[_Union[Ood, _Mapping]] = ...) -> None: ...

class Ood(_message.Message):
    __slots__ = ("score", "value", "threshold", "in_distribution")
    SCORE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IN_DISTRIBUTION_FIELD_NUMBER: _ClassVar[int]
    score: str
    value: float
    threshold: float
    in_distribution: bool
    def __init__(self, score: _Optional[str] = ..., value: _Optional[float] = ..., threshold: _Optional[float] = ..., in_distribution: _Optional[bool] = ...) -> None: ...

class ClassifyBatchRequest(_message.Message):
    __slots__ = ("images", "top_k")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    top_k: int
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., top_k: _Optional[int] = ...) -> None: ...

class ClassifyBatchResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ClassifyResponse]
    def __init__(self, results: _Optional[_Iterable[_Union[ClassifyResponse, _Mapping]]] = ...) -> None: ...

class ExplainRequest(_message.Message):
    __slots__ = ("image", "url")
    IMAGE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    image: bytes
    url: str
    def __init__(self, image: _Optional[bytes] = ..., url: _Optional[str] = ...) -> None: ...

class ExplainResponse(_message.Message):
    __slots__ = ("model", "version", "class_name", "class_id", "probability", "height", "width", "saliency", "request_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CLASS_NAME_FIELD_NUMBER: _ClassVar[int]
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    PROBABILITY_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    SALIENCY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    version: int
    class_name: str
    class_id: int
    probability: float
    height: int
    width: int
    saliency: _containers.RepeatedScalarFieldContainer[float]
    request_id: str
    def __init__(self, model: _Optional[str] = ..., version: _Optional[int] = ..., class_name: _Optional[str] = ..., class_id: _Optional[int] = ..., probability: _Optional[float] = ..., height: _Optional[int] = ..., width: _Optional[int] = ..., saliency: _Optional[_Iterable[float]] = ..., request_id: _Optional[str] = ...) -> None: ...
