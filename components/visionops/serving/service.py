"""The BentoML service: a generic classifier that serves whatever model bundle ``VISIONOPS_MODEL_URI`` names.

Started by ``bentoml serve visionops.serving.service:VisionOpsClassifier`` (what ``visionops serve`` and the
serving container run). This is the one module that imports bentoml and torch at the top: only the server
imports it.

Endpoints (all POST answer JSON; errors are ``{"error": "...", "request_id": "..."}`` with a 4xx/5xx status):

- ``/classify``        one image: multipart field ``image``, or the raw bytes with ``Content-Type: image/*``
- ``/classify_batch``  several images: multipart, the field ``images`` repeated
- ``/feedback``        JSON ``{"request_id": ..., "label": ...}``: the true label for an earlier answer; needs the
  reviewer token (``Authorization: Bearer``) and a request id this service issued (signed with the feedback
  key, :mod:`visionops.auth`)
- ``/livez``, ``/readyz`` (ready once the model is loaded and warmed up), ``/metrics`` (Prometheus)

Every image is validated (content type, bytes, pixels, corrupt/truncated) before it reaches the model;
valid ones are merged across concurrent requests by BentoML's adaptive batching dispatcher (bounded batch
size and latency from the settings).
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import anyio
import bentoml
import torch
from bentoml._internal.marshal.dispatcher import CorkDispatcher
from bentoml.exceptions import ServiceUnavailable
from bentoml.validators import ContentType
from starlette.datastructures import UploadFile

from visionops.auth import MAX_REQUEST_ID_CHARS, AuthError, ControlAuth
from visionops.errors import (
    ImageError,
    MalformedRequest,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)
from visionops.images import ImageLimits
from visionops.onnx_runtime import cpu_limit_threads
from visionops.serving import bundled_model_uri
from visionops.serving.capture import PayloadCapture
from visionops.serving.emitter import DROP_REASONS
from visionops.serving.metrics import serving_metrics
from visionops.serving.monitor_process import LOG_DROPPED, MonitorProcess, PredictionEvent
from visionops.serving.predictor import Predictor
from visionops.serving.settings import ServingSettings

log = logging.getLogger("visionops.serving")

#: Content types of an image part or body that we try to decode (the decoder then checks the real format).
ACCEPTED_TYPES = ("image/", "application/octet-stream")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: Feedback may name one image of a batch answer: ``<request id>-<index>``, signed: ``<...>.<signature>``.
_FEEDBACK_ID = re.compile(rf"^[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}$")
#: Multipart overhead allowed on top of the image bytes before a request is refused from its Content-Length.
_MULTIPART_SLACK = 64 * 1024
#: Largest /feedback body (a request id and a label).
FEEDBACK_MAX_BYTES = 64 * 1024
#: Seconds a client is told to wait after a 503 (load shedding, not ready) before retrying.
RETRY_AFTER_S = 1


# -- request bodies ---------------------------------------------------------------------------------------------
@dataclass
class Upload:
    """One image as received: bytes, declared content type, file name."""

    data: bytes
    content_type: str | None = None
    filename: str | None = None


class BodyTooLarge(PayloadTooLarge):
    """Raised by :class:`BodyLimit` while a body without a (truthful) Content-Length is being read."""


def _media_type(value: str | None) -> str:
    return (value or "").split(";")[0].strip().lower()


async def _read_uploads(request, field: str, *, many: bool) -> list[Upload] | RequestError:
    """The image(s) of a request: multipart field ``field`` (repeated when ``many``) or a raw image body.

    A refused request comes back as its :class:`RequestError` (whose type carries the status), answered by
    the endpoint so that it gets a request id and is counted like every other answer.
    """
    try:
        return await _parse_uploads(request, field, many=many)
    except RequestError as exc:
        return exc


async def _parse_uploads(request, field: str, *, many: bool) -> list[Upload]:
    media = _media_type(request.headers.get("content-type"))
    if media.startswith("image/") or (media == "application/octet-stream" and not many):
        body = await request.body()
        return [Upload(body, media)]
    if media not in ("multipart/form-data",):
        how = (
            f"multipart/form-data with the field {field!r} repeated"
            if many
            else f"multipart/form-data with the field {field!r}, or the raw image with Content-Type image/*"
        )
        raise UnsupportedMediaType(f"unsupported Content-Type {media or '(none)'!r}: send {how}")
    try:
        form = await request.form()
    except BodyTooLarge:
        raise
    except Exception as exc:  # malformed multipart body
        raise RequestError(f"malformed multipart body: {exc}") from exc
    parts = form.getlist(field)
    if not parts:
        raise RequestError(
            f"multipart field {field!r} is missing (got fields {sorted(set(form.keys()))}); "
            f"send the image{'s' if many else ''} as {field!r}",
        )
    if not many and len(parts) > 1:
        raise RequestError(f"send exactly one {field!r} field here; use /classify_batch for several images")
    uploads = []
    for part in parts:
        if not isinstance(part, UploadFile):
            raise RequestError(f"field {field!r} must be a file upload, not a text value")
        ctype = _media_type(part.content_type)
        if ctype and not ctype.startswith(ACCEPTED_TYPES):
            raise UnsupportedMediaType(
                f"part {part.filename or field!r} has Content-Type {ctype!r}; send an image/*"
            )
        uploads.append(Upload(await part.read(), ctype or None, part.filename))
    return uploads


class ClassifyInput(bentoml.IODescriptor):
    """One image: multipart field ``image`` or a raw ``image/*`` body."""

    image: Annotated[Path, ContentType("image/*")]

    @classmethod
    async def from_http_request(cls, request, serde) -> ClassifyInput:
        return cls.model_construct(image=await _read_uploads(request, "image", many=False))


class BatchInput(bentoml.IODescriptor):
    """Several images: multipart, the field ``images`` repeated."""

    images: list[Annotated[Path, ContentType("image/*")]]

    @classmethod
    async def from_http_request(cls, request, serde) -> BatchInput:
        return cls.model_construct(images=await _read_uploads(request, "images", many=True))


class FeedbackInput(bentoml.IODescriptor):
    """JSON ``{"request_id": ..., "label": ...}``; anything else becomes a :class:`RequestError` (4xx) that
    the endpoint answers and counts, instead of a parsing exception inside BentoML (500 and a traceback)."""

    request_id: str
    label: str

    @classmethod
    async def from_http_request(cls, request, serde) -> FeedbackInput:
        try:
            request_id, label = await _parse_feedback(request)
        except RequestError as exc:
            return cls.model_construct(request_id=exc, label="")
        return cls.model_construct(request_id=request_id, label=label)


async def _parse_feedback(request) -> tuple[str, str]:
    media = _media_type(request.headers.get("content-type"))
    if media not in ("application/json", ""):
        raise UnsupportedMediaType(
            f'unsupported Content-Type {media!r}: send JSON {{"request_id": ..., "label": ...}}'
        )
    body = await request.body()  # bounded by BodyLimit (BodyTooLarge -> 413)
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise RequestError(f"the body is not valid JSON: {str(exc)[:120]}") from exc
    if not isinstance(data, dict) or not all(isinstance(data.get(k), str) for k in ("request_id", "label")):
        raise MalformedRequest('send JSON {"request_id": "<string>", "label": "<string>"}')
    return data["request_id"], data["label"]


class BodyLimit:
    """ASGI middleware: refuse a body over the limit (413).

    A declared Content-Length over the limit is refused before anything is read; a chunked body is counted
    while it streams and reading stops (:class:`BodyTooLarge`) as soon as it passes the limit.
    """

    #: The served model's version (set by the service once loaded), for the requests this refuses.
    model_version = ""

    def __init__(self, app) -> None:
        self.app = app
        self._limits: dict[str, int] | None = None

    def limits(self) -> dict[str, int]:
        if self._limits is None:
            s = ServingSettings.from_env()
            one = s.max_image_bytes + _MULTIPART_SLACK
            self._limits = {
                "/classify": one,
                "/classify_batch": one * s.max_request_images,
                "/feedback": FEEDBACK_MAX_BYTES,
            }
        return self._limits

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and (limit := self.limits().get(scope["path"])) is not None:
            length = dict(scope["headers"]).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                from starlette.responses import JSONResponse

                refused = PayloadTooLarge(
                    f"request body of {int(length)} bytes exceeds the limit of {limit} bytes"
                )
                response = JSONResponse({"error": str(refused)}, status_code=refused.http_status)
                await response(scope, receive, send)
                _count_refused(scope["path"], refused.http_status)
                return
            receive = _counting(receive, limit)
        await self.app(scope, receive, send)


def _count_refused(path: str, status: int) -> None:
    """Count a request refused before it reached an endpoint, like the endpoints count theirs."""
    metrics = serving_metrics()
    metrics.requests.labels(path.strip("/"), str(status), BodyLimit.model_version).inc()


class RetryAfter:
    """ASGI middleware: every 503 (load shed by the batcher, BentoML's own when not ready or over its
    concurrency) tells the client when to retry."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_retry_after(message):
            if message["type"] == "http.response.start" and message["status"] == 503:
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"retry-after" for name, _ in headers):
                    headers.append((b"retry-after", str(RETRY_AFTER_S).encode()))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_retry_after)


def _counting(receive, limit: int):
    """An ASGI ``receive`` that raises :class:`BodyTooLarge` once more than ``limit`` body bytes arrived."""
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise BodyTooLarge(f"request body exceeds the limit of {limit} bytes")
        return message

    return wrapped


def _overloaded():
    raise ServiceUnavailable(
        "server overloaded: the batch queue exceeds VISIONOPS_MAX_LATENCY_MS; retry later"
    )


# -- the service ------------------------------------------------------------------------------------------------
@bentoml.service(name="visionops", workers=1, traffic={"timeout": 60}, logging={"access": {"enabled": False}})
class VisionOpsClassifier:
    """Classify images with the model bundle at ``VISIONOPS_MODEL_URI``."""

    def __init__(self) -> None:
        self.settings = ServingSettings.from_env()
        self.auth = ControlAuth()  # request-id signing and the reviewer token of /feedback
        # bentoml leaves the root logger at WARNING: the start-up line (model, runtime, threads) is INFO.
        logging.getLogger("visionops").setLevel(logging.INFO)
        # The container's CPU limit, not the host's cores: more threads than the quota only get throttled.
        threads = self.settings.torch_threads or cpu_limit_threads()
        torch.set_num_threads(threads)
        limits = ImageLimits(
            max_bytes=self.settings.max_image_bytes, max_pixels=self.settings.max_image_pixels
        )
        uri = self.settings.model_uri or bundled_model_uri() or self.settings.require_model()
        started = time.perf_counter()
        self.predictor = Predictor.load(
            uri,
            threshold=self.settings.threshold,
            limits=limits,
            device=self.settings.device,
            runtime=self.settings.runtime,
            threads=threads,
        )
        self.metrics = serving_metrics()
        BodyLimit.model_version = self.predictor.version  # the label of requests refused before an endpoint
        self.metrics.model_info.labels(self.predictor.version, self.predictor.architecture).set(1)
        for reason in (*DROP_REASONS, LOG_DROPPED):  # zero samples, so the series exist before the first drop
            self.metrics.dropped.labels(reason)
        self.monitor = None
        if self.settings.monitor_url or self.settings.prediction_log:
            dropped = self.metrics.dropped
            self.monitor = MonitorProcess(
                self.predictor.row_maker(),
                monitor_url=self.settings.monitor_url,
                prediction_log=self.settings.prediction_log,
                queue_size=self.settings.monitor_queue_size,
                path_headers={  # the sidecar's roles: serving's rows on /ingest, the reviewer's labels
                    "/ingest": self.auth.auth_header("ingest"),
                    "/feedback": self.auth.auth_header("reviewer"),
                },
                on_drop=lambda reason, n: dropped.labels(reason).inc(n),
            )
        self.capture = None
        if self.settings.capture_uri and self.settings.capture_rate > 0:
            self.capture = PayloadCapture(self.settings.capture_uri, self.settings.capture_rate)
        self._dispatch = None
        self._warm_up()
        log.info(
            "serving model %s (%s) from %s, threshold %.4f, runtime %s (%s), %d threads, loaded in %.1fs",
            self.predictor.version,
            self.predictor.architecture,
            uri,
            self.predictor.threshold,
            self.predictor.runtime.name,
            self.predictor.runtime.reason,
            threads,
            time.perf_counter() - started,
        )
        self._ready = True

    @bentoml.on_shutdown
    def _flush(self) -> None:
        """Deliver what is queued for the monitor, the prediction log and the capture before the process
        exits (each within its own deadline; what is left is dropped and counted)."""
        for sink in (self.monitor, self.capture):
            if sink is not None:
                sink.close(timeout=5.0)

    def __is_ready__(self) -> bool:
        return getattr(self, "_ready", False)

    def _warm_up(self) -> None:
        """One inference before readiness, so the first user request does not pay for lazy initialisation."""
        from PIL import Image

        size = self.predictor.bundle.preprocess.resize_size
        image = Image.new("RGB", (size, size), (128, 128, 128))
        self.predictor.infer(self.predictor.to_tensor(image)[None])
        if self.monitor is not None:
            self.predictor.thumbnail(image)  # first-call costs of the request-side monitoring step, too

    # -- batching -------------------------------------------------------------------------------------------
    def _infer_batch(self, tensors: Sequence[Any]) -> list[tuple[Any, Any]]:
        """The batched model call (runs in a worker thread): per image (probs row, embedding row or None)."""
        outputs = self.predictor.infer(torch.stack(list(tensors)))
        embeddings = outputs.embeddings if outputs.embeddings is not None else [None] * len(tensors)
        return list(zip(outputs.probs, embeddings, strict=True))

    async def _infer_one(self, tensor) -> tuple[Any, Any]:
        # CorkDispatcher is the adaptive batching engine behind ``@bentoml.api(batchable=True)``. It is used
        # directly so that validation, request ids, status codes and metrics stay per request while the model
        # sees merged batches (a batchable endpoint fails a whole merged batch for one bad image). bentoml is
        # pinned in constraints.txt and the serving tests exercise this path.
        if self._dispatch is None:  # the dispatcher binds to the running event loop
            dispatcher = CorkDispatcher(
                max_latency_in_ms=self.settings.max_latency_ms,
                max_batch_size=self.settings.max_batch_size,
                fallback=_overloaded,
                get_batch_size=lambda _: 1,
            )
            self._dispatch = dispatcher(self._infer_batch)
        return await self._dispatch(tensor)

    # -- request handling ------------------------------------------------------------------------------------
    def _request_id(self, ctx: bentoml.Context) -> str:
        """The caller's X-Request-ID (when well formed) or a new one; unsigned (:meth:`ControlAuth.issue`)."""
        given = ctx.request.headers.get("x-request-id", "")
        return given if _REQUEST_ID.match(given) else uuid.uuid4().hex

    def _prepare(self, uploads: list[Upload]) -> list[tuple[Any, Any, Any]]:
        """Decode and transform each upload (in a worker thread); the first bad image refuses the request.

        Each entry is (image, tensor, thumbnail): the small thumbnail is all the monitoring path gets of the
        image (None when monitoring and logging are off).
        """
        watch = self.monitor is not None
        prepared, budget = [], self.predictor.limits.request_budget()  # decoded pixels per request
        for i, upload in enumerate(uploads):
            try:
                image = self.predictor.decode(upload.data, budget)
            except ImageError as exc:
                if len(uploads) > 1:  # same type (so the same status), the message says which image
                    raise type(exc)(f"image {i} ({upload.filename}): {exc}") from exc
                raise
            thumb = self.predictor.thumbnail(image) if watch else None
            prepared.append((image, self.predictor.to_tensor(image), thumb))
        return prepared

    async def _answer(
        self, endpoint: str, uploads: list[Upload] | RequestError, ctx: bentoml.Context, *, many: bool
    ):
        started = time.perf_counter()
        base = self._request_id(ctx)
        rid = self.auth.issue(base)  # signed: /feedback accepts only ids this service issued
        ctx.response.headers["X-Request-ID"] = rid
        version = self.predictor.version
        status = 200
        try:
            if isinstance(uploads, RequestError):
                raise uploads
            if many and len(uploads) > self.settings.max_request_images:
                raise PayloadTooLarge(
                    f"{len(uploads)} images in one request; the limit is {self.settings.max_request_images} "
                    "(VISIONOPS_MAX_REQUEST_IMAGES)",
                )
            prepared = await anyio.to_thread.run_sync(self._prepare, uploads)
            outputs = await asyncio.gather(*(self._infer_one(tensor) for _, tensor, _ in prepared))
        except RequestError as exc:
            status, body = exc.http_status, {"error": str(exc), "request_id": rid}
        except ServiceUnavailable as exc:
            status, body = 503, {"error": str(exc), "request_id": rid}
            ctx.response.headers["Retry-After"] = str(RETRY_AFTER_S)
        else:
            answers = [self.predictor.describe(probs) for probs, _ in outputs]
            for i, answer in enumerate(answers):
                answer["request_id"] = self.auth.issue(f"{base}-{i}") if many else rid
                self.metrics.predictions.labels(answer["label"], version).inc()
                self.metrics.confidence.labels(version).observe(answer["confidence"])
            self._record(rid, uploads, prepared, outputs, answers)
            if many:
                body = {
                    "request_id": rid,
                    "model_version": version,
                    "threshold": self.predictor.threshold,
                    "predictions": answers,
                }
            else:
                body = answers[0]
        ctx.response.status_code = status
        self.metrics.requests.labels(endpoint, str(status), version).inc()
        self.metrics.latency.labels(endpoint, version).observe(time.perf_counter() - started)
        return body

    def _record(self, rid: str, uploads, prepared, outputs, answers) -> None:
        """Hand the event to the monitoring process and the capture (both non-blocking).

        The event holds thumbnails and the outputs of the forward pass that already ran; rows are built in
        the monitoring process (see :mod:`visionops.serving.monitor_process`).
        """
        if self.monitor is None and self.capture is None:
            return
        import numpy as np

        stamp = time.time()
        now = datetime.fromtimestamp(stamp, UTC).isoformat()
        variant = self.settings.variant
        if self.monitor is not None:
            embs = [e for _, e in outputs]
            thumbs = [t for _, _, t in prepared]
            self.monitor.emit(
                PredictionEvent(
                    thumbs=None if any(t is None for t in thumbs) else thumbs,
                    probs=np.stack([np.asarray(p) for p, _ in outputs]),
                    embeddings=None
                    if any(e is None for e in embs)
                    else np.stack([np.asarray(e) for e in embs]),
                    answers=answers,
                    time=now,
                    timestamp=stamp,
                    variant=variant,
                )
            )
        if self.capture is not None:
            for (image, _, _), upload, answer in zip(prepared, uploads, answers, strict=True):
                if self.capture.sample():
                    record = {**answer, "time": now, "variant": variant}
                    self.capture.submit(upload.data, image, record)

    @bentoml.api(route="/classify", input_spec=ClassifyInput)
    async def classify(self, image: Any, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify one image: multipart field ``image`` (or a raw ``image/*`` body)."""
        return await self._answer("classify", image, ctx, many=False)

    @bentoml.api(route="/classify_batch", input_spec=BatchInput)
    async def classify_batch(self, images: Any, ctx: bentoml.Context) -> dict[str, Any]:
        """Classify several images (multipart, field ``images`` repeated) in one request."""
        return await self._answer("classify_batch", images, ctx, many=True)

    def _check_feedback(self, request_id: str, label: str, ctx: bentoml.Context) -> None:
        """Refuse feedback that is not from a reviewer (401/403), has a label the model does not know, or names
        a request id this service did not issue (400/403)."""
        self.auth.require("reviewer", ctx.request.headers.get("authorization"))
        if label not in self.predictor.classes:
            raise RequestError(f"unknown label {label[:80]!r}; valid: {self.predictor.classes}")
        if not _FEEDBACK_ID.match(request_id):
            raise RequestError(f"request_id {request_id[:80]!r} is not a request id from this service")
        self.auth.check_request_id(request_id)

    @bentoml.api(route="/feedback", input_spec=FeedbackInput)
    async def feedback(self, request_id: Any, label: str, ctx: bentoml.Context) -> dict[str, Any]:
        """Record the true label of an earlier answer (ground truth for live quality)."""
        started = time.perf_counter()
        version = self.predictor.version
        try:
            if isinstance(request_id, RequestError):  # the body was refused while parsing
                raise request_id
            self._check_feedback(request_id, label, ctx)
        except (RequestError, AuthError) as exc:
            status, body = exc.http_status, {"error": str(exc)}
        else:
            status = 200
            common = {
                "request_id": request_id,
                "time": datetime.now(UTC).isoformat(),
                "model_version": version,
            }
            # the sidecar's contract: {"request_id", "label"}; log records with a "feedback" key are ground truth
            to_monitor = {**common, "label": label} if self.settings.monitor_url else None
            to_log = None
            if self.settings.prediction_log:
                to_log = {**common, "type": "feedback", "feedback": label, "variant": self.settings.variant}
            queued = self.monitor is not None and self.monitor.feedback(to_monitor, to_log)
            body = {
                "request_id": request_id,
                "label": label,
                "forwarded": queued and to_monitor is not None,
                "logged": queued and to_log is not None,
            }
        ctx.response.status_code = status
        self.metrics.requests.labels("feedback", str(status), version).inc()
        self.metrics.latency.labels("feedback", version).observe(time.perf_counter() - started)
        return body


VisionOpsClassifier.add_asgi_middleware(BodyLimit)
VisionOpsClassifier.add_asgi_middleware(RetryAfter)
