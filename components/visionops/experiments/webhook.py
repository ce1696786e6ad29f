"""A canary-analysis webhook for progressive-delivery controllers (Flagger, Argo Rollouts).

Flagger calls ``POST /canary/check`` at every analysis step with ``{"name", "namespace", "phase",
"checksum", "metadata": {...}}``; a 2xx answer lets the rollout go on, anything else counts as a failed check
(after the configured threshold of failures Flagger rolls back). We answer 200 for ``promote`` and ``continue``
and 412 for ``abort``, with the whole analysis as JSON so the controller's events show why.

The canary's traffic weight changes during a rollout, so the caller states the current one (``canaryWeight``,
in percent, at the top level of the body or in ``metadata``). The webhook remembers each canary's weights
over time and tests the sample ratio of every request against the weight in force when it was served; the
checks use always-valid intervals, so the repeated looks of a rollout do not inflate false aborts. Without a
stated weight the configured ``--weights`` are used, and the answer says so.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from visionops.errors import VisionOpsError
from visionops.experiments.analysis import AnalysisConfig, analyze

log = logging.getLogger(__name__)

#: Where the caller puts the current canary weight (percent): the body's top level or its metadata.
WEIGHT_KEYS = ("canaryWeight", "canary_weight", "weight")


class BadRequest(VisionOpsError):
    """The caller sent something the webhook cannot use (HTTP 400)."""


def caller_weight(payload: dict) -> float | None:
    """The canary weight (percent, 0-100) the caller states, or None when it states none."""
    metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else {}
    for source in (payload, metadata):
        for key in WEIGHT_KEYS:
            if source.get(key) not in (None, ""):
                try:
                    weight = float(source[key])
                except (TypeError, ValueError):
                    raise BadRequest(f"{key}={source[key]!r} is not a number (percent of traffic)") from None
                if not 0 <= weight <= 100:
                    raise BadRequest(f"{key}={weight} is outside 0-100 (percent of traffic)")
                return weight
    return None


class WeightHistory:
    """The weights each canary (namespace/name/checksum) was reported at, with the time of each report.

    A report says which weight served the traffic since the previous look; bounded per canary and in the
    number of canaries so a long-lived webhook cannot grow without end.
    """

    def __init__(self, max_canaries: int = 256, max_reports: int = 1000) -> None:
        self.max_canaries, self.max_reports = max_canaries, max_reports
        self._reports: dict[str, list[tuple[float, dict[str, float]]]] = {}
        self._lock = threading.Lock()

    def report(self, key: str, weights: dict[str, float], now: float | None = None) -> list:
        """Record ``weights`` for ``key`` now; returns the canary's history so far."""
        with self._lock:
            reports = self._reports.pop(key, [])
            reports.append((time.time() if now is None else now, dict(weights)))
            self._reports[key] = reports[-self.max_reports :]
            while len(self._reports) > self.max_canaries:
                self._reports.pop(next(iter(self._reports)))
            return list(self._reports[key])


def _weights_for(config: AnalysisConfig, canary_percent: float) -> dict[str, float]:
    """The configured variant names with the caller's split: the control gets the rest."""
    names = list(config.weights or {})
    control = config.control or (sorted(names)[0] if names else None)
    others = [n for n in names if n != control]
    if control is None or len(others) != 1:
        raise VisionOpsError(
            "a caller-stated canary weight needs --weights naming exactly two variants, e.g. baseline=90,canary=10"
        )
    return {control: 100.0 - canary_percent, others[0]: canary_percent}


def check(
    logs: str,
    config: AnalysisConfig,
    metadata: dict | None = None,
    *,
    history: list[tuple[float, dict[str, float]]] | None = None,
) -> tuple[int, dict]:
    """Run the canary analysis on ``logs`` (metadata may override ``logs``); (HTTP status, body).

    ``history``: the weights in force over time (the caller's reports); its last entry is the current split.
    """
    metadata = metadata or {}
    if history:
        config = dataclasses.replace(config, weights=history[-1][1], weight_history=history)
    try:
        result = analyze(metadata.get("logs", logs), config=config)
    except VisionOpsError as exc:
        return 422, {"verdict": "error", "reason": str(exc)}
    status = 412 if result["verdict"] == "abort" else 200
    body = {k: result[k] for k in ("verdict", "reason", "score", "checks", "srm", "canary_requests_needed")}
    body["weights"] = {"split": config.weights, "source": "caller" if history else "configured"}
    return status, body


def build_app(logs: str, config: AnalysisConfig, *, weights: WeightHistory | None = None):
    """aiohttp app with ``POST /canary/check`` and ``GET /healthz``."""
    from aiohttp import web

    weights = weights or WeightHistory()

    async def canary_check(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            payload = {}
        payload = payload if isinstance(payload, dict) else {}
        metadata = payload.get("metadata") if isinstance(payload.get("metadata"), dict) else None
        try:
            percent = caller_weight(payload)
            history = None
            if percent is not None:
                key = "/".join(str(payload.get(k, "")) for k in ("namespace", "name", "checksum"))
                history = weights.report(key, _weights_for(config, percent))
        except VisionOpsError as exc:
            return web.json_response({"verdict": "error", "reason": str(exc)}, status=400)
        status, body = check(logs, config, metadata, history=history)
        log.info("canary check for %s/%s: %s", payload.get("namespace"), payload.get("name"), body["verdict"])
        return web.json_response(body, status=status)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/canary/check", canary_check)
    app.router.add_get("/healthz", healthz)
    return app
