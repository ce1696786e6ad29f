"""``visionops route``: a thin HTTP router in front of model variants, for what the mesh cannot do
(sticky units, bandits).

Every request is forwarded unchanged to one variant chosen by the policy (fixed weights, sticky hash of a
unit header, or constrained Thompson sampling: best recall among variants meeting the precision target).
The answer comes back with ``X-Variant`` and ``X-Request-ID``; one JSON line per request goes to the
experiment log (variant, unit, assignment policy, status, latency, label, confidence) through a background
writer, never on the request path. ``POST /feedback`` takes the true label of a request id, updates the
bandit and is forwarded to the variant that answered; it needs the reviewer token and a request id serving
signed (:mod:`visionops.auth`), so forged feedback cannot move the shares. Requests awaiting feedback are held
in a bounded map whose evictions are counted (``visionops_router_feedback_evicted_total``). A variant that
fails ``eject_after`` requests in a row (unreachable, timeout, 500/502/504) is ejected: it gets no traffic for
``eject_seconds``, then one request re-probes it (success: back in; failure: out again).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from visionops.auth import AuthError, ControlAuth
from visionops.errors import ConfigError, LengthRequired, MalformedRequest, PayloadTooLarge, RequestError
from visionops.experiments.assign import POLICIES, Assigner, PendingFeedback, ThompsonState, parse_weights
from visionops.policy import POSITIVE_CLASS, TARGET_PRECISION
from visionops.settings import Settings, setting

log = logging.getLogger(__name__)

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}


def _render_pairs(mapping: dict) -> str:
    """``{"a": "http://x", "b": 2.0}`` -> ``"a=http://x,b=2.0"`` (what parse_variants / parse_weights read)."""
    return ",".join(f"{k}={v}" for k, v in mapping.items())


@dataclass(frozen=True)
class RouterSettings(Settings):
    """Where the variants are and how traffic is split (env ``VISIONOPS_ROUTER_*`` or ``visionops route`` options)."""

    kind: ClassVar[str] = "router settings"

    variants: dict[str, str] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        default_factory=dict,
        help="name=http://host:port (repeat per variant).",
        env="VISIONOPS_ROUTER_VARIANTS",
        parse=lambda raw: parse_variants(raw),
        render=_render_pairs,
        flags=("--variant",),
        multiple=True,
    )
    weights: dict[str, float] = setting(  # noqa: RUF009 - setting() returns a dataclasses.field
        default_factory=dict,
        help="e.g. champion=90,challenger=10 (default equal).",
        env="VISIONOPS_ROUTER_WEIGHTS",
        parse=parse_weights,
        render=_render_pairs,
        flags=("--weights",),
    )
    policy: str = setting(
        "weights", "weights | sticky | thompson", env="VISIONOPS_ROUTER_POLICY", choices=POLICIES
    )
    salt: str = setting("visionops", "Per-experiment salt of the sticky hash.", env="VISIONOPS_ROUTER_SALT")
    unit_header: str = setting(
        "X-Unit-ID",
        "Header holding the sticky unit (camera / worker id).",
        env="VISIONOPS_ROUTER_UNIT_HEADER",
    )
    positive_class: str = setting(POSITIVE_CLASS, "Class whose precision the bandit watches.")
    target_precision: float = setting(
        TARGET_PRECISION,
        "Thompson: variants credibly below it are capped.",
        env="VISIONOPS_TARGET_PRECISION",
        check=lambda v: 0 <= v <= 1,
        must="must be in [0, 1]",
    )
    floor: float = setting(
        0.05,
        "Thompson: minimum share of every variant.",
        check=lambda v: 0 <= v < 1,
        must="must be in [0, 1)",
    )
    cap: float = setting(
        0.05,
        "Thompson: maximum share of a variant failing the precision target.",
        check=lambda v: 0 <= v <= 1,
        must="must be in [0, 1]",
    )
    half_life: float = setting(
        0.0,
        "Thompson: feedback events after which old evidence weighs half (0 = never discount; for "
        "non-stationary traffic).",
        env="VISIONOPS_ROUTER_HALF_LIFE",
        check=lambda v: v >= 0,
        must="must be >= 0",
    )
    refresh_seconds: float = setting(
        5.0, "Thompson: seconds between two share updates.", check=lambda v: v > 0, must="must be > 0"
    )
    log_path: str | None = setting(
        None,
        "Experiment log (JSON lines), the input of `experiment analyze`.",
        env="VISIONOPS_ROUTER_LOG",
        flags=("--log",),
    )
    max_pending_feedback: int = setting(
        100_000,
        "Request ids kept for feedback (oldest forgotten first).",
        check=lambda v: v >= 1,
        must="must be >= 1",
    )
    timeout_seconds: float = setting(
        30.0, "Timeout of a forwarded request.", check=lambda v: v > 0, must="must be > 0"
    )
    eject_after: int = setting(
        5,
        "Eject a variant after this many consecutive failed requests (unreachable, timeout, 500/502/504).",
        env="VISIONOPS_ROUTER_EJECT_AFTER",
        check=lambda v: v >= 1,
        must="must be >= 1",
    )
    eject_seconds: float = setting(
        30.0,
        "Seconds an ejected variant gets no traffic before one request re-probes it.",
        env="VISIONOPS_ROUTER_EJECT_SECONDS",
        check=lambda v: v > 0,
        must="must be > 0",
    )
    extra: dict = setting(default_factory=dict, help="Free-form settings for extensions.", cli=False)  # noqa: RUF009

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.variants and not self.weights:  # no weights given: an equal split
            object.__setattr__(self, "weights", {v: 1.0 for v in self.variants})

    def validate(self) -> None:
        if not self.variants:
            raise ConfigError("the router needs at least one variant: --variant name=http://host:port")
        unknown = set(self.weights) - set(self.variants)
        if unknown:
            raise ConfigError(
                f"weights name unknown variants {sorted(unknown)}; variants: {sorted(self.variants)}"
            )


def parse_variants(text: str) -> dict[str, str]:
    """``"a=http://x:3000,b=http://y:3000"`` -> ``{"a": "http://x:3000", "b": "http://y:3000"}``."""
    out: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, url = part.partition("=")
        if not sep or not url.startswith(("http://", "https://")):
            raise ConfigError(f"bad variant {part!r}; expected name=http://host:port")
        out[name.strip()] = url.rstrip("/")
    return out


class JsonLinesWriter:
    """Appends JSON lines from a :class:`~visionops.background.BackgroundWriter`; a full queue drops (and
    counts) instead of blocking."""

    def __init__(self, path: str | None, maxsize: int = 50_000) -> None:
        from visionops.background import BackgroundWriter

        self.path = Path(path) if path else None
        self._writer = None
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = BackgroundWriter(
                self._append, name="router-log", max_items=maxsize, batch_size=1000, flush_seconds=0.05
            )

    @property
    def dropped(self) -> int:
        """Records not written (queue full, disk trouble, close deadline)."""
        return 0 if self._writer is None else sum(self._writer.dropped.values())

    def write(self, record: dict) -> None:
        if self._writer is not None:
            self._writer.put(record)

    def _append(self, records: list[dict]) -> None:
        with self.path.open("a", encoding="utf-8") as fh:
            fh.write("".join(json.dumps(r) + "\n" for r in records))

    def close(self, timeout: float = 5.0) -> None:
        if self._writer is not None:
            self._writer.close(timeout)


#: Upstream statuses that count as a failure of the variant (503 is load shedding, not a dead variant).
FAILURE_STATUSES = frozenset({500, 502, 504})


class VariantHealth:
    """Consecutive failures per variant; ejection after ``eject_after`` of them, a re-probe after a cool-off."""

    def __init__(self, variants, *, eject_after: int, eject_seconds: float, clock=time.monotonic) -> None:
        self.eject_after, self.eject_seconds, self._clock = eject_after, eject_seconds, clock
        self.failures = dict.fromkeys(variants, 0)
        self.ejected_until: dict[str, float] = {}
        self.ejections = dict.fromkeys(variants, 0)
        self._probing: set[str] = set()
        self._lock = threading.Lock()

    def usable(self, variant: str) -> bool:
        """Not ejected; or ejected, cooled off and not being re-probed (this caller becomes the probe)."""
        with self._lock:
            until = self.ejected_until.get(variant)
            if until is None:
                return True
            if self._clock() < until or variant in self._probing:
                return False
            self._probing.add(variant)
            return True

    def record(self, variant: str, ok: bool) -> None:
        with self._lock:
            self._probing.discard(variant)
            if ok:
                self.failures[variant] = 0
                if self.ejected_until.pop(variant, None) is not None:
                    log.warning("variant %s answered again: back in the rotation", variant)
                return
            self.failures[variant] = self.failures.get(variant, 0) + 1
            if variant in self.ejected_until or self.failures[variant] >= self.eject_after:
                if variant not in self.ejected_until:
                    self.ejections[variant] = self.ejections.get(variant, 0) + 1
                    log.warning(
                        "variant %s ejected after %d consecutive failures; re-probed in %.0fs",
                        variant,
                        self.failures[variant],
                        self.eject_seconds,
                    )
                self.ejected_until[variant] = self._clock() + self.eject_seconds

    def ejected(self) -> set[str]:
        with self._lock:
            return set(self.ejected_until)


class Router:
    """The routing state: the assigner, the pending request map for feedback, counters and the log."""

    def __init__(
        self, settings: RouterSettings, *, seed: int | None = None, auth: ControlAuth | None = None
    ) -> None:
        settings.validate()
        self.settings = settings
        self.auth = auth if auth is not None else ControlAuth()
        self.health = VariantHealth(
            settings.variants, eject_after=settings.eject_after, eject_seconds=settings.eject_seconds
        )
        thompson = ThompsonState(
            sorted(settings.variants),
            target=settings.target_precision,
            floor=settings.floor,
            cap=settings.cap,
            control=next(iter(settings.variants)),  # the first --variant: what ran before the experiment
            half_life=settings.half_life or None,
        )
        weights = {v: settings.weights.get(v, 0.0) for v in settings.variants}
        self.assigner = Assigner(
            weights, policy=settings.policy, salt=settings.salt, thompson=thompson, seed=seed
        )
        self.pending = PendingFeedback(settings.max_pending_feedback)
        self.counts: collections.Counter = collections.Counter()
        self.log = JsonLinesWriter(settings.log_path)

    def choose(self, unit: str | None) -> str:
        """The policy's variant, or, when it is ejected, another usable one by weight (all ejected: the
        policy's choice, so traffic still re-probes)."""
        import random

        variant = self.assigner.choose(unit)
        if self.health.usable(variant):
            return variant
        others = {v: w for v, w in self.settings.weights.items() if v != variant and w > 0}
        healthy = {v: w for v, w in others.items() if v not in self.health.ejected()}
        if not healthy:
            return variant
        names = sorted(healthy)
        return random.choices(names, weights=[healthy[n] for n in names])[0]

    def remember(self, request_id: str, variant: str, label: str | None) -> None:
        self.pending.add(request_id, variant, label)

    def feedback(self, request_id: str, true_label: str) -> str | None:
        """Update the bandit with the true label of a routed request; returns its variant (None if unknown)."""
        entry = self.pending.pop(request_id)
        if entry is None:
            return None
        variant, predicted = entry
        positive = self.settings.positive_class
        self.assigner.thompson.record(variant, predicted == positive, true_label == positive)
        return variant

    def metrics_text(self) -> str:
        lines = [
            "# HELP visionops_router_requests_total Requests routed, by variant and HTTP status.",
            "# TYPE visionops_router_requests_total counter",
        ]
        for (variant, status), n in sorted(self.counts.items()):
            lines.append(f'visionops_router_requests_total{{variant="{variant}",status="{status}"}} {n}')
        lines += [
            "# HELP visionops_router_share Current traffic share of each variant.",
            "# TYPE visionops_router_share gauge",
        ]
        for variant, share in sorted(self.assigner._shares.items()):
            lines.append(f'visionops_router_share{{variant="{variant}"}} {share}')
        lines += [
            "# HELP visionops_router_ejections_total Times a variant was ejected after consecutive failures.",
            "# TYPE visionops_router_ejections_total counter",
        ]
        ejected = self.health.ejected()
        for variant, n in sorted(self.health.ejections.items()):
            lines.append(f'visionops_router_ejections_total{{variant="{variant}"}} {n}')
        lines += [
            "# HELP visionops_router_variant_ejected 1 while a variant is ejected.",
            "# TYPE visionops_router_variant_ejected gauge",
        ]
        for variant in sorted(self.settings.variants):
            lines.append(f'visionops_router_variant_ejected{{variant="{variant}"}} {int(variant in ejected)}')
        lines += [
            "# TYPE visionops_router_log_dropped_total counter",
            f"visionops_router_log_dropped_total {self.log.dropped}",
            "# HELP visionops_router_feedback_evicted_total Pending requests dropped before their feedback came.",
            "# TYPE visionops_router_feedback_evicted_total counter",
            f"visionops_router_feedback_evicted_total {self.pending.evicted}",
            "# HELP visionops_router_feedback_unmatched_total Feedback for unknown or evicted request ids.",
            "# TYPE visionops_router_feedback_unmatched_total counter",
            f"visionops_router_feedback_unmatched_total {self.pending.unmatched}",
            "# TYPE visionops_router_feedback_pending gauge",
            f"visionops_router_feedback_pending {len(self.pending)}",
        ]
        return "\n".join(lines) + "\n"


def _label_of(body: bytes, content_type: str) -> tuple[str | None, float | None]:
    """The predicted label and its probability from a JSON answer, when it has them."""
    if "json" not in content_type or len(body) > 65536:
        return None, None
    try:
        data = json.loads(body)
    except ValueError:
        return None, None
    if isinstance(data, list) and data:
        data = data[0]
    if isinstance(data, dict):
        return data.get("label"), data.get("probability")
    return None, None


def build_app(router: Router):
    """The aiohttp application: a catch-all forwarder plus /feedback, /router/state and /router/metrics."""
    return _RouterHandlers(router).app()


class _RouterHandlers:
    """The router's HTTP handlers around one :class:`Router`; the client session lives from startup to
    cleanup."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.settings = router.settings
        self.session = None
        self.refresher: asyncio.Task | None = None

    def app(self):
        from aiohttp import web

        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.on_startup.append(self.on_startup)
        app.on_cleanup.append(self.on_cleanup)
        app.router.add_post("/feedback", self.feedback)
        app.router.add_get("/router/state", self.state)
        app.router.add_get("/router/metrics", self.metrics)
        app.router.add_get("/router/healthz", self.healthz)
        app.router.add_route("*", "/{tail:.*}", self.forward)
        return app

    async def on_startup(self, _app) -> None:
        import aiohttp

        self.session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self.settings.timeout_seconds),
            connector=aiohttp.TCPConnector(limit=256, keepalive_timeout=30),
            auto_decompress=False,
        )
        if self.settings.policy == "thompson":
            self.refresher = asyncio.create_task(self.refresh_loop())

    async def on_cleanup(self, _app) -> None:
        if self.refresher is not None:
            self.refresher.cancel()
        await self.session.close()
        self.router.log.close()

    async def refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.refresh_seconds)
            self.router.assigner.refresh()

    async def _call_variant(self, request, variant: str, request_id: str) -> tuple[int, bytes, dict, str]:
        """Forward the request unchanged to ``variant``: (status, body, headers, the id serving returned)."""
        import aiohttp

        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Request-ID"] = request_id
        headers["X-Variant"] = variant
        body = await request.read()
        url = self.settings.variants[variant] + request.rel_url.path_qs
        try:
            async with self.session.request(request.method, url, data=body, headers=headers) as upstream:
                payload = await upstream.read()
                # serving signs the ids it issues: remember and return the signed one (feedback names it)
                request_id = upstream.headers.get("X-Request-ID") or request_id
                out_headers = {
                    k: v
                    for k, v in upstream.headers.items()
                    if k.lower() not in HOP_BY_HOP and k.lower() != "x-request-id"
                }
                return upstream.status, payload, out_headers, request_id
        except (TimeoutError, aiohttp.ClientError) as exc:
            error = {"error": f"variant {variant!r} unreachable: {exc.__class__.__name__}"}
            return 502, json.dumps(error).encode(), {"Content-Type": "application/json"}, request_id

    async def forward(self, request):
        from aiohttp import web

        router, settings = self.router, self.settings
        started = time.perf_counter()
        unit = request.headers.get(settings.unit_header)
        variant = router.choose(unit)
        request_id = request.headers.get("X-Request-ID") or uuid.uuid4().hex
        status, payload, out_headers, request_id = await self._call_variant(request, variant, request_id)
        router.health.record(variant, status not in FAILURE_STATUSES)
        out_headers["X-Variant"] = variant
        out_headers["X-Request-ID"] = request_id
        label, confidence = _label_of(payload, out_headers.get("Content-Type", ""))
        router.counts[(variant, status)] += 1
        if label is not None:
            router.remember(request_id, variant, label)
        router.log.write(
            {
                "time": time.time(),
                "request_id": request_id,
                "variant": variant,
                "unit": unit,
                "assignment": settings.policy,
                "path": request.path,
                "status": status,
                "latency_ms": round((time.perf_counter() - started) * 1000, 3),
                "label": label,
                "confidence": confidence,
            }
        )
        return web.Response(body=payload, status=status, headers=out_headers)

    async def _read_feedback(self, request) -> tuple[str, str]:
        """The reviewer's (request_id, label), or a :class:`RequestError` / :class:`AuthError` saying why not.

        A reviewer, naming a request id serving signed: forged feedback never reaches the bandit."""
        self.router.auth.require("reviewer", request.headers.get("Authorization"))
        if request.content_length is None:
            raise LengthRequired("send the JSON body with a Content-Length")
        if request.content_length > 65536:
            raise PayloadTooLarge("a feedback body is at most 65536 bytes")
        try:
            data = json.loads(await request.read())
            request_id, label = data["request_id"], data["label"]
            if not isinstance(request_id, str) or not isinstance(label, str) or len(label) > 256:
                raise TypeError("request_id and label must be strings")
        except (ValueError, KeyError, TypeError, RecursionError) as exc:
            raise MalformedRequest('expected JSON {"request_id": "...", "label": "..."}') from exc
        self.router.auth.check_request_id(request_id)
        return request_id, label

    async def feedback(self, request):
        import aiohttp
        from aiohttp import web

        try:
            request_id, label = await self._read_feedback(request)
        except (RequestError, AuthError) as exc:
            return web.json_response({"error": str(exc)}, status=exc.http_status)
        variant = self.router.feedback(request_id, label)
        self.router.log.write(
            {"time": time.time(), "request_id": request_id, "variant": variant, "feedback": label}
        )
        if variant is None:
            return web.json_response(
                {"error": f"unknown or already answered request_id {request_id!r}"}, status=404
            )
        try:
            async with self.session.post(
                self.settings.variants[variant] + "/feedback",
                json={"request_id": request_id, "label": label},
                headers=self.router.auth.auth_header("reviewer"),
            ) as upstream:
                await upstream.read()
        except (TimeoutError, aiohttp.ClientError):
            log.warning("could not forward feedback for %s to %s", request_id, variant)
        return web.json_response({"request_id": request_id, "variant": variant})

    async def state(self, _request):
        from aiohttp import web

        router = self.router
        names = ("precision_ok", "precision_bad", "recall_ok", "recall_bad")
        return web.json_response(
            {
                "policy": self.settings.policy,
                "shares": router.assigner._shares,
                "weights": router.assigner.weights,
                "requests": {f"{v}:{s}": n for (v, s), n in router.counts.items()},
                "feedback": {
                    v: dict(zip(names, c.tolist(), strict=True))
                    for v, c in router.assigner.thompson.counts.items()
                },
                "feedback_pending": len(router.pending),
                "feedback_evicted": router.pending.evicted,
            }
        )

    async def healthz(self, _request):
        from aiohttp import web

        return web.json_response({"ok": True, "variants": sorted(self.settings.variants)})

    async def metrics(self, _request):
        from aiohttp import web

        return web.Response(text=self.router.metrics_text(), content_type="text/plain")


def serve(settings: RouterSettings, *, host: str = "0.0.0.0", port: int = 8080) -> None:
    """Run the router until interrupted."""
    from aiohttp import web

    log.info("routing %s with policy %s on %s:%d", settings.variants, settings.policy, host, port)
    web.run_app(build_app(Router(settings)), host=host, port=port, access_log=None, print=None)


class BackgroundServer:
    """An aiohttp application served from a background thread (tests, benchmarks, the local demo)."""

    def __init__(self, app, host: str = "127.0.0.1", port: int = 0) -> None:
        self.app, self.host, self.port = app, host, port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._runner = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="aiohttp-server", daemon=True)

    def _run(self) -> None:
        from aiohttp import web

        self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self._loop)
        self._runner = web.AppRunner(self.app, access_log=None)
        self._loop.run_until_complete(self._runner.setup())
        site = web.TCPSite(self._runner, self.host, self.port)
        self._loop.run_until_complete(site.start())
        self.port = site._server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    def start(self) -> BackgroundServer:
        self._thread.start()
        if not self._ready.wait(15):
            raise RuntimeError("server did not start")
        return self

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
