"""The drift monitor's HTTP service: a small threaded server beside ``visionops serve`` (same pod, own port).

Endpoints::

    POST /ingest     {"rows": [feature rows]}   schema-checked; good rows are kept, bad ones -> 422 + reasons
                     (ingest token, which serving sends: rows from anyone else could fake or hide drift)
    POST /feedback   {"request_id", "label"} or {"labels": [...]}   ground truth -> live precision/recall
                     (reviewer token; only request ids serving signed, see visionops.auth)
    POST /alerts     Alertmanager webhook payload -> the retraining trigger (same code path as drift)
                     (alert token: ``Authorization: Bearer``, Alertmanager's ``http_config.authorization``)
    GET  /metrics    Prometheus text (names: docs/ARCHITECTURE.md)
    GET  /drift      the latest drift result (JSON)
    GET  /report     the latest drift report (one self-contained HTML file)
    GET  /healthz    the process is up
    GET  /readyz     the reference is loaded and the drift worker runs

The handler only maps requests to the :class:`~visionops.drift.monitor.Monitor`; the status of a refused
request comes from the type of the error (:func:`status_for`), never from its message. Every answer, errors
included, is JSON. A hostile or broken client costs bounded resources: a silent connection is closed after
``socket_timeout_s`` (a body shorter than its Content-Length gets 408), a body over ``max_body_bytes`` is refused
(413) before it is read, JSON nested deeper than ``max_json_depth`` gets 400, and strings have length limits.
"""

from __future__ import annotations

import contextlib
import json
import logging
import threading
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, ClassVar

from visionops.auth import ControlAuth
from visionops.drift.monitor import Monitor
from visionops.drift.settings import MonitorSettings
from visionops.errors import (
    ConfigError,
    LengthRequired,
    MalformedRequest,
    PayloadTooLarge,
    RequestError,
    RequestTimeout,
    VisionOpsError,
)

log = logging.getLogger(__name__)


def status_for(exc: Exception) -> int:
    """The HTTP status of an error raised while handling a request: its ``http_status`` (a RequestError's type
    or an AuthError's 401/403); anything else is the server's fault (500)."""
    return int(getattr(exc, "http_status", None) or HTTPStatus.INTERNAL_SERVER_ERROR)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # headers and body go out in separate writes: without TCP_NODELAY, Nagle + delayed ACK add ~40 ms
    # to every keep-alive request
    disable_nagle_algorithm = True
    monitor: Monitor  # set on the subclass made by MonitorServer
    auth: ControlAuth  # likewise
    timeout: float  # socket timeout (StreamRequestHandler applies it to every read and write)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, data: Any) -> None:
        self._send(status, json.dumps(data, default=str).encode(), "application/json")

    def send_error(self, code: int, message: str | None = None, explain: str | None = None) -> None:
        """The server's own errors (bad request line, unknown method, header too long...) as JSON too."""
        self.close_connection = True
        with contextlib.suppress(OSError):  # the client may be gone
            self._json(code, {"detail": message or HTTPStatus(code).phrase})

    def _body(self) -> Any:
        """The JSON body: bounded in bytes, time and nesting depth (every refusal a RequestError)."""
        settings = self.monitor.settings
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise LengthRequired("send the body with a Content-Length (no chunking)")
        declared = (self.headers.get("Content-Length") or "0").strip()
        if not declared.isdigit():
            self.close_connection = True
            raise RequestError(f"Content-Length {declared[:40]!r} is not a number")
        length = int(declared)
        if length > settings.max_body_bytes:
            self.close_connection = True  # the body is never read: the connection cannot be reused
            raise PayloadTooLarge(
                f"body of {length} bytes is over the limit of {settings.max_body_bytes} bytes",
            )
        try:
            raw = self.rfile.read(length)
        except TimeoutError as exc:
            self.close_connection = True
            raise RequestTimeout(
                f"the body did not arrive within {self.timeout:g}s (is Content-Length {length} right?)",
            ) from exc
        if len(raw) < length:
            self.close_connection = True
            raise RequestError(f"body of {len(raw)} bytes; Content-Length said {length}")
        return parse_json(raw, settings.max_json_depth)

    def do_GET(self) -> None:
        try:
            self._get()
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        log.exception("unexpected error answering %s %s", self.command, self.path[:200])
        self.close_connection = True
        with contextlib.suppress(OSError):
            self._json(HTTPStatus.INTERNAL_SERVER_ERROR, {"detail": "internal error (see the sidecar log)"})

    def _get(self) -> None:
        m = self.monitor
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            m.metrics.window_rows.set(len(m.window))
            self._send(200, m.metrics.render(), "text/plain; version=0.0.4; charset=utf-8")
        elif path == "/drift":
            self._json(200, m.latest_public())
        elif path == "/report":
            html = m.report_html()
            if html is None:
                self._json(
                    404, {"detail": "no drift computed yet; the first report comes with the first window"}
                )
            else:
                self._send(200, html.encode(), "text/html; charset=utf-8")
        elif path == "/healthz":
            self._json(200, {"status": "ok"})
        elif path == "/readyz":
            ready = m.ready and m.worker_alive
            self._json(
                200 if ready else 503,
                {"ready": ready, "model_version": m.model_version, "reference_rows": len(m.reference)},
            )
        else:
            self._json(404, {"detail": f"no endpoint {path}"})

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        route = self._POST_ROUTES.get(path)
        try:
            if route is None:
                self.close_connection = True  # the body is not read
                self._json(HTTPStatus.NOT_FOUND, {"detail": f"no endpoint {path[:200]}"})
                return
            role = self._ROLES.get(path)
            if role is not None:  # checked before the body is read: anonymous bodies are never parsed
                try:
                    self.auth.require(role, self.headers.get("Authorization"))
                except VisionOpsError:
                    self.close_connection = True
                    raise
            route(self, self._body())
        except VisionOpsError as exc:
            if getattr(exc, "http_status", None) is None:  # not the client's fault: logged, answered 500
                self._internal_error()
            else:
                self._json(status_for(exc), {"detail": str(exc)})
        except Exception:
            self._internal_error()

    def _ingest(self, body: Any) -> None:
        m = self.monitor
        rows = body.get("rows") if isinstance(body, dict) else None
        if not isinstance(rows, list):
            raise MalformedRequest('expected {"rows": [feature rows]}')
        if len(rows) > m.settings.max_rows_per_request:
            raise PayloadTooLarge(
                f"{len(rows)} rows in one request; at most {m.settings.max_rows_per_request}",
            )
        accepted, bad = m.ingest(rows)
        if bad:
            self._json(422, {"accepted": accepted, "rejected": len(bad), "errors": bad[:20]})
        else:
            self._json(200, {"accepted": accepted})

    def _feedback(self, body: Any) -> None:
        m = self.monitor
        items = body.get("labels", [body]) if isinstance(body, dict) else None
        if not isinstance(items, list):
            raise MalformedRequest(
                'expected {"request_id": ..., "label": ...} or {"labels": [...]}',
            )
        matched, problems = m.feedback(items, self.auth)
        # every item refused for the same reason: that reason's status (404: all ids unknown); mixed: 422
        statuses = {p["status"] for p in problems}
        status = 200 if not problems else statuses.pop() if len(statuses) == 1 else 422
        self._json(status, {"matched": matched, "errors": problems[:20], "quality": m.quality.summary()})

    def _alerts(self, body: Any) -> None:
        m = self.monitor
        results = m.trigger.handle_alertmanager(body)
        m.metrics.retrain_alert.set(m.trigger.alert)
        outcomes: dict[str, int] = {}
        for result in results:
            outcomes[result["outcome"]] = outcomes.get(result["outcome"], 0) + 1
        # a payload of thousands of alerts gets a bounded answer: the first results and the counts
        answer = {"results": results[:100], "outcomes": outcomes, "retrain_alert": m.trigger.alert}
        self._json(200, answer)

    _POST_ROUTES: ClassVar[dict[str, Callable[[_Handler, Any], None]]] = {
        "/ingest": _ingest,
        "/feedback": _feedback,
        "/alerts": _alerts,
    }
    #: the bearer-token role each control endpoint requires (visionops.auth)
    _ROLES: ClassVar[dict[str, str]] = {"/ingest": "ingest", "/feedback": "reviewer", "/alerts": "alert"}


def parse_json(raw: bytes, max_depth: int) -> Any:
    """JSON from a request body, refused (400) when malformed or nested deeper than ``max_depth``.

    The C decoder raises RecursionError on pathological nesting (caught here, not a dropped connection);
    the depth of what it returns is then checked without recursion.
    """
    try:
        value = json.loads(raw or b"null")
    except RecursionError as exc:
        raise RequestError(f"JSON nested deeper than {max_depth} levels") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise RequestError(f"body is not JSON: {exc}") from exc
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            if depth > max_depth:
                raise RequestError(f"JSON nested deeper than {max_depth} levels")
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children if isinstance(child, dict | list))
    return value


_BUSY_BODY = b'{"detail": "too many connections to the sidecar; retry later"}'
_BUSY = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(_BUSY_BODY), _BUSY_BODY)
)


class _BoundedServer(ThreadingHTTPServer):
    """A threading server with at most ``max_connections`` connections (threads) at once; one more is answered
    503 and closed at once, so slow or stuck clients cannot pile up threads without bound."""

    daemon_threads = True
    max_connections = 64

    def server_activate(self) -> None:
        super().server_activate()
        self._slots = threading.BoundedSemaphore(self.max_connections)

    def process_request(self, request, client_address) -> None:
        if not self._slots.acquire(blocking=False):
            with contextlib.suppress(OSError):
                request.sendall(_BUSY)
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request, client_address) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


class MonitorServer:
    """The HTTP server around a :class:`Monitor`; ``start()`` runs it in a thread, ``serve_forever()`` here."""

    def __init__(
        self,
        monitor: Monitor,
        host: str | None = None,
        port: int | None = None,
        *,
        auth: ControlAuth | None = None,
    ) -> None:
        attributes = {
            "monitor": monitor,
            "auth": auth if auth is not None else ControlAuth(),
            "timeout": monitor.settings.socket_timeout_s,
        }
        handler = type("MonitorHandler", (_Handler,), attributes)
        self.monitor = monitor
        try:
            server_class = type(
                "MonitorHTTPServer", (_BoundedServer,), {"max_connections": monitor.settings.max_connections}
            )
            self.httpd = server_class(
                (host or monitor.settings.host, monitor.settings.port if port is None else port), handler
            )
        except OSError as exc:
            raise ConfigError(
                f"cannot listen on {host or monitor.settings.host}:{port}: {exc.strerror}"
            ) from exc
        self.httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self.httpd.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> MonitorServer:
        self.monitor.start()
        self._thread = threading.Thread(
            target=self.httpd.serve_forever, name="visionops-monitor-http", daemon=True
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        self.monitor.start()
        try:
            self.httpd.serve_forever()
        finally:
            self.stop()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.monitor.stop()


def serve(settings: MonitorSettings) -> None:
    """Run the sidecar until interrupted (what ``visionops monitor`` calls)."""
    auth = ControlAuth()  # first: a missing secret file fails before the reference is loaded
    monitor = Monitor(settings)
    server = MonitorServer(monitor, auth=auth)
    for role in ("alert", "reviewer", "ingest"):
        if not auth.configured(role):
            state = "open (VISIONOPS_INSECURE_CONTROL)" if auth.insecure else "refused"
            log.warning("no %s token configured: %s requests are %s", role, role, state)
    log.info(
        "drift monitor for model %s on %s:%d (window %d rows, drift every %d rows or %.0fs)",
        monitor.model_version,
        settings.host,
        server.port,
        settings.window_size,
        settings.every_rows,
        settings.drift_every_seconds,
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        log.info("drift monitor stopped")
