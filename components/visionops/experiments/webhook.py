"""A canary-analysis webhook for progressive-delivery controllers (Flagger, Argo Rollouts).

Flagger calls ``POST /canary/check`` at every analysis step with ``{"name", "namespace", "phase",
"metadata": {...}}``; a 2xx answer lets the rollout go on, anything else counts as a failed check (after the
configured threshold of failures Flagger rolls back). We answer 200 for ``promote`` and ``continue`` and 412
for ``abort``, with the whole analysis as JSON so the controller's events show why.
"""

from __future__ import annotations

import logging

from visionops.errors import VisionOpsError
from visionops.experiments.analysis import AnalysisConfig, analyze

log = logging.getLogger(__name__)


def check(logs: str, config: AnalysisConfig, metadata: dict | None = None) -> tuple[int, dict]:
    """Run the canary analysis on ``logs`` (metadata may override ``logs``); (HTTP status, body)."""
    metadata = metadata or {}
    try:
        result = analyze(metadata.get("logs", logs), config=config)
    except VisionOpsError as exc:
        return 422, {"verdict": "error", "reason": str(exc)}
    status = 412 if result["verdict"] == "abort" else 200
    return status, {k: result[k] for k in ("verdict", "reason", "score", "checks", "srm")}


def build_app(logs: str, config: AnalysisConfig):
    """aiohttp app with ``POST /canary/check`` and ``GET /healthz``."""
    from aiohttp import web

    async def canary_check(request: web.Request) -> web.Response:
        try:
            payload = await request.json()
        except ValueError:
            payload = {}
        status, body = check(logs, config, payload.get("metadata") if isinstance(payload, dict) else None)
        log.info("canary check for %s/%s: %s", payload.get("namespace"), payload.get("name"), body["verdict"])
        return web.json_response(body, status=status)

    async def healthz(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_post("/canary/check", canary_check)
    app.router.add_get("/healthz", healthz)
    return app
