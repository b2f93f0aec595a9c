"""The gateway's own gRPC service (classifier.proto): Classify, ClassifyBatch and Explain, on grpc.aio.

Auth (the `authorization` metadata), request ids (`x-request-id` in, or
generated; sent back as trailing metadata and in the response), the caller's deadline (passed on
to the backend call) and metrics are handled once in `_call`. The service runs
on the gateway's event loop beside its REST API: a call waiting for the
backend (or a URL) holds no thread; large images are checked on threads.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable

import grpc

from cifarflow.serving.errors import InvalidInput, ServingError, Unavailable, as_serving_error
from cifarflow.serving.gateway.auth import BearerAuth
from cifarflow.serving.gateway.proto import classifier_pb2, classifier_pb2_grpc
from cifarflow.serving.gateway.service import Classification, Classifier, check_top_k

access_log = logging.getLogger("cifarflow.gateway.access")
log = logging.getLogger(__name__)


def _response(
    result: Classification, top_k: int, request_id: str
) -> classifier_pb2.ClassifyResponse:
    response = classifier_pb2.ClassifyResponse(
        model=result.model, version=result.version, request_id=request_id
    )
    for class_id, name, probability in result.top(top_k):
        response.predictions.add(class_name=name, probability=probability, class_id=class_id)
    if result.ood is not None:
        ood = response.ood
        ood.score, ood.value = result.ood.score, result.ood.value
        if result.ood.threshold is not None and result.ood.in_distribution is not None:
            ood.threshold = result.ood.threshold
            ood.in_distribution = result.ood.in_distribution
    return response


class ClassifierServicer(classifier_pb2_grpc.ClassifierServicer):
    def __init__(
        self, classifier: Classifier, auth: BearerAuth, is_draining: Callable[[], bool]
    ) -> None:
        self.classifier = classifier
        self.auth = auth
        self.is_draining = is_draining

    async def _call(
        self,
        endpoint: str,
        context: grpc.aio.ServicerContext,
        work: Callable[[str, float | None], Awaitable[object]],
    ):
        started = time.perf_counter()
        metadata = {key: value for key, value in (context.invocation_metadata() or ())}
        request_id = str(metadata.get("x-request-id") or "")[:64] or uuid.uuid4().hex
        # Trailing, not initial, metadata: it rides with the status in the last
        # message, while initial metadata would cost a write of its own.
        context.set_trailing_metadata((("x-request-id", request_id),))
        remaining = context.time_remaining()
        deadline = time.monotonic() + remaining if remaining is not None else None
        code, error = "OK", None
        try:
            if self.is_draining():
                raise Unavailable("the gateway is shutting down")
            self.auth.check(metadata.get("authorization"))
            with self.classifier.metrics.in_flight.track_inprogress():
                return await work(request_id, deadline)
        except asyncio.CancelledError:  # the client went away or the server is stopping
            code = "CANCELLED"
            raise
        except Exception as exc:
            error = as_serving_error(exc)
            if not isinstance(exc, ServingError):
                log.exception("unhandled error in %s (request %s)", endpoint, request_id)
            code = error.grpc_code.name
        finally:
            seconds = time.perf_counter() - started
            self.classifier.metrics.observe(
                "grpc", endpoint, code, seconds, error.cause if error else None
            )
            if access_log.isEnabledFor(logging.INFO):
                access_log.info(
                    json.dumps(
                        {
                            "event": "request",
                            "protocol": "grpc",
                            "request_id": request_id,
                            "method": endpoint,
                            "code": code,
                            "ms": round(seconds * 1000, 2),
                        }
                    )
                )
        await context.abort(error.grpc_code, error.message)

    async def _image(self, request) -> bytes:
        """The request's image: its bytes, or fetched from its URL (Classify and Explain)."""
        source = request.WhichOneof("source")
        if source is None:
            raise InvalidInput("set 'image' (bytes) or 'url'")
        if source == "image":
            return request.image
        return await self.classifier.fetch(request.url)

    async def Classify(self, request, context):
        async def work(request_id: str, deadline: float | None):
            top_k = check_top_k(request.top_k, self.classifier.config.default_top_k)
            data = await self._image(request)
            result = await self.classifier.classify([data], request_id, deadline)
            return _response(result[0], top_k, request_id)

        return await self._call("Classify", context, work)

    async def ClassifyBatch(self, request, context):
        async def work(request_id: str, deadline: float | None):
            top_k = check_top_k(request.top_k, self.classifier.config.default_top_k)
            results = await self.classifier.classify(list(request.images), request_id, deadline)
            return classifier_pb2.ClassifyBatchResponse(
                results=[_response(r, top_k, request_id) for r in results]
            )

        return await self._call("ClassifyBatch", context, work)

    async def Explain(self, request, context):
        async def work(request_id: str, deadline: float | None):
            data = await self._image(request)
            prepared = await asyncio.to_thread(self.classifier.prepare, [data])
            result = await self.classifier.explain_prepared(prepared[0], request_id, deadline)
            height, width = result.saliency.shape
            return classifier_pb2.ExplainResponse(
                model=result.classification.model,
                version=result.classification.version,
                class_name=result.class_name,
                class_id=result.class_id,
                probability=result.probability,
                height=height,
                width=width,
                saliency=result.saliency.ravel().tolist(),
                request_id=request_id,
            )

        return await self._call("Explain", context, work)
