"""Serving: a generic BentoML service that loads any model bundle by URI.

- :mod:`visionops.serving.settings`  -- ``ServingSettings.from_env()`` (the ``VISIONOPS_*`` serving variables)
- :mod:`visionops.serving.predictor` -- bundle -> predictions for image bytes (in-process; no HTTP)
- :mod:`visionops.serving.monitor_process` -- the monitoring path (feature rows, monitor, prediction log) in a
  child process fed by a bounded, byte-limited queue: thumbnails and model outputs in, nothing waits
- :mod:`visionops.serving.emitter`   -- fire-and-forget sender of feature rows to the drift sidecar
- :mod:`visionops.serving.prediction_log` -- JSON-lines prediction log (local dir or s3:// prefix)
- :mod:`visionops.serving.capture`   -- sampled payload capture (image + prediction) to object storage
- :mod:`visionops.serving.metrics`   -- the Prometheus metrics (names fixed by docs/ARCHITECTURE.md)
- :mod:`visionops.serving.service`   -- the ``@bentoml.service`` (imported by ``bentoml serve`` only)
- :mod:`visionops.serving.package`   -- ``package(bundle_uri, output)``: build and export a ``.bento`` archive

Importing this package is cheap: no torch, no bentoml.
"""

from __future__ import annotations

SERVICE_IMPORT = "visionops.serving.service:VisionOpsClassifier"

#: Where a packaged Bento carries its model bundle, relative to the Bento's source root.
BUNDLED_MODEL_DIR = "model"


def bundled_model_uri() -> str | None:
    """The bundle shipped inside a built Bento (``<bento src>/model``), or None outside a Bento."""
    from pathlib import Path

    candidate = Path(__file__).resolve().parents[2] / BUNDLED_MODEL_DIR
    return str(candidate) if (candidate / "bundle.json").is_file() else None
