"""Serving settings, read once from the environment (a Kubernetes ConfigMap / Secret sets them).

The CLI (``visionops serve``) turns its options into the same variables, so the container and the laptop run
the same code with the same configuration path.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields

from visionops.errors import ConfigError

#: Environment variable -> field name. The first block is the contract in docs/ARCHITECTURE.md.
ENV_VARS = {
    "VISIONOPS_MODEL_URI": "model_uri",
    "VISIONOPS_MONITOR_URL": "monitor_url",
    "VISIONOPS_MAX_IMAGE_BYTES": "max_image_bytes",
    "VISIONOPS_MAX_IMAGE_PIXELS": "max_image_pixels",
    "VISIONOPS_MAX_BATCH_SIZE": "max_batch_size",
    "VISIONOPS_MAX_LATENCY_MS": "max_latency_ms",
    "VISIONOPS_THRESHOLD": "threshold",
    "VISIONOPS_CAPTURE_URI": "capture_uri",
    "VISIONOPS_CAPTURE_RATE": "capture_rate",
    "VISIONOPS_PREDICTION_LOG": "prediction_log",
    "VISIONOPS_VARIANT": "variant",
    # serving-only extras
    "VISIONOPS_MAX_REQUEST_IMAGES": "max_request_images",
    "VISIONOPS_MONITOR_QUEUE_SIZE": "monitor_queue_size",
    "VISIONOPS_DEVICE": "device",
    "VISIONOPS_TORCH_THREADS": "torch_threads",
    "VISIONOPS_RUNTIME": "runtime",
}


@dataclass(frozen=True)
class ServingSettings:
    """Everything the serving role reads from its environment."""

    model_uri: str = ""
    monitor_url: str = ""
    max_image_bytes: int = 10 * 1024 * 1024
    max_image_pixels: int = 40_000_000
    max_batch_size: int = 32
    max_latency_ms: int = 500
    threshold: float | None = None
    capture_uri: str = ""
    capture_rate: float = 0.0
    prediction_log: str = ""
    variant: str = "default"
    max_request_images: int = 64
    monitor_queue_size: int = 10_000
    device: str = "auto"
    #: torch (and ONNX Runtime) intra-op threads; 0 = the container's CPU limit (cgroup cpu.max).
    torch_threads: int = 0
    #: auto | torch | onnx | onnx-int8 (see visionops.serving.runtime; checked when the model loads)
    runtime: str = "auto"

    def __post_init__(self) -> None:
        checks = [
            (self.max_image_bytes >= 1024, "VISIONOPS_MAX_IMAGE_BYTES must be >= 1024"),
            (self.max_image_pixels >= 64, "VISIONOPS_MAX_IMAGE_PIXELS must be >= 64"),
            (1 < self.max_batch_size <= 4096, "VISIONOPS_MAX_BATCH_SIZE must be in 2..4096"),
            (self.max_latency_ms >= 10, "VISIONOPS_MAX_LATENCY_MS must be >= 10 (hundreds of ms is sane)"),
            (self.threshold is None or 0.0 <= self.threshold <= 1.0, "VISIONOPS_THRESHOLD must be in [0, 1]"),
            (0.0 <= self.capture_rate <= 1.0, "VISIONOPS_CAPTURE_RATE must be in [0, 1]"),
            (self.max_request_images >= 1, "VISIONOPS_MAX_REQUEST_IMAGES must be >= 1"),
            (self.monitor_queue_size >= 1, "VISIONOPS_MONITOR_QUEUE_SIZE must be >= 1"),
            (self.torch_threads >= 0, "VISIONOPS_TORCH_THREADS must be >= 0 (0 = torch's default)"),
            (
                self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"),
                "VISIONOPS_DEVICE must be auto, cpu, cuda or cuda:N",
            ),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"{message} (got {self})")
        if self.monitor_url and not self.monitor_url.startswith(("http://", "https://")):
            raise ConfigError(
                f"VISIONOPS_MONITOR_URL={self.monitor_url!r} is not an http(s) URL "
                "(e.g. http://127.0.0.1:8001; empty turns monitoring off)"
            )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ServingSettings:
        """Read the ``VISIONOPS_*`` serving variables; unset or empty variables keep their defaults."""
        env = os.environ if env is None else env
        types = {f.name: f.type for f in fields(cls)}
        values: dict[str, object] = {}
        for var, name in ENV_VARS.items():
            raw = env.get(var, "").strip()
            if not raw:
                continue
            kind = types[name]
            try:
                if kind == "int":
                    values[name] = int(raw)
                elif kind in ("float", "float | None"):
                    values[name] = float(raw)
                else:
                    values[name] = raw.rstrip("/") if name in ("monitor_url",) else raw
            except ValueError as exc:
                raise ConfigError(f"{var}={raw!r} is not a valid {kind.split()[0]}") from exc
        return cls(**values)

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env` (what ``visionops serve`` hands to the server process)."""
        out = {}
        for var, name in ENV_VARS.items():
            value = getattr(self, name)
            out[var] = "" if value is None else str(value)
        return out

    def require_model(self) -> str:
        """The model URI, or a ConfigError that says how to set it."""
        if not self.model_uri:
            raise ConfigError(
                "no model to serve: set VISIONOPS_MODEL_URI (or `visionops serve --model URI`) to a bundle "
                "directory or s3:// URI"
            )
        return self.model_uri
