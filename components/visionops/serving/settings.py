"""Serving settings, read once from the environment (a Kubernetes ConfigMap / Secret sets them).

One settings dataclass (:mod:`visionops.settings`) declares each variable, its check and its ``visionops serve``
option; the CLI turns its options into the same variables, so the container and the laptop run the same code
with the same configuration path.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from visionops.errors import ConfigError
from visionops.settings import Settings, env_vars, setting


def _is_http_url(url: str) -> bool:
    return not url or url.startswith(("http://", "https://"))


def _is_device(device: str) -> bool:
    return device in ("auto", "cpu") or device.startswith("cuda")


@dataclass(frozen=True)
class ServingSettings(Settings):
    """Everything the serving role reads from its environment (``visionops serve`` options override it)."""

    kind: ClassVar[str] = "serving settings"

    model_uri: str = setting(
        "",
        "Model bundle URI (dir or s3://).",
        env="VISIONOPS_MODEL_URI",
        flags=("--model", "-m"),
    )
    monitor_url: str = setting(
        "",
        "Drift sidecar base URL (e.g. http://127.0.0.1:8001); '' = off.",
        env="VISIONOPS_MONITOR_URL",
        parse=lambda raw: raw.rstrip("/"),
        check=_is_http_url,
        must="is not an http(s) URL (e.g. http://127.0.0.1:8001; empty turns monitoring off)",
    )
    max_image_bytes: int = setting(
        10 * 1024 * 1024,
        "Largest accepted image in bytes.",
        env="VISIONOPS_MAX_IMAGE_BYTES",
        check=lambda v: v >= 1024,
        must="must be >= 1024",
    )
    max_image_pixels: int = setting(
        40_000_000,
        "Largest accepted image in pixels (decompression bombs).",
        env="VISIONOPS_MAX_IMAGE_PIXELS",
        check=lambda v: v >= 64,
        must="must be >= 64",
    )
    max_batch_size: int = setting(
        32,
        "Adaptive batching: largest batch.",
        env="VISIONOPS_MAX_BATCH_SIZE",
        check=lambda v: 1 < v <= 4096,
        must="must be in 2..4096",
    )
    max_latency_ms: int = setting(
        500,
        "Adaptive batching: latency bound in ms.",
        env="VISIONOPS_MAX_LATENCY_MS",
        check=lambda v: v >= 10,
        must="must be >= 10 (hundreds of ms is sane)",
    )
    threshold: float | None = setting(
        None,
        "Override the bundle's decision threshold.",
        env="VISIONOPS_THRESHOLD",
        check=lambda v: 0.0 <= v <= 1.0,
        must="must be in [0, 1]",
    )
    capture_uri: str = setting("", "Payload capture directory or s3:// prefix.", env="VISIONOPS_CAPTURE_URI")
    capture_rate: float = setting(
        0.0,
        "Share of requests to capture (0..1).",
        env="VISIONOPS_CAPTURE_RATE",
        check=lambda v: 0.0 <= v <= 1.0,
        must="must be in [0, 1]",
    )
    prediction_log: str = setting(
        "", "Prediction log directory or s3:// prefix (JSON lines).", env="VISIONOPS_PREDICTION_LOG"
    )
    variant: str = setting(
        "default", "Experiment variant label on every logged prediction.", env="VISIONOPS_VARIANT"
    )
    # serving-only extras
    max_request_images: int = setting(
        64,
        "Most images in one /classify_batch request.",
        env="VISIONOPS_MAX_REQUEST_IMAGES",
        check=lambda v: v >= 1,
        must="must be >= 1",
    )
    monitor_queue_size: int = setting(
        10_000,
        "Feature rows queued for the sidecar before new ones are dropped.",
        env="VISIONOPS_MONITOR_QUEUE_SIZE",
        check=lambda v: v >= 1,
        must="must be >= 1",
    )
    device: str = setting(
        "auto",
        "auto, cpu, cuda or cuda:N.",
        env="VISIONOPS_DEVICE",
        check=_is_device,
        must="must be auto, cpu, cuda or cuda:N",
    )
    #: torch and ONNX Runtime intra-op threads; 0 = the container's CPU limit (cgroup cpu.max), never the host's
    #: cores (more threads than the quota only get throttled).
    torch_threads: int = setting(
        0,
        "torch and ONNX Runtime intra-op threads (0 = the container's CPU limit).",
        env="VISIONOPS_TORCH_THREADS",
        check=lambda v: v >= 0,
        must="must be >= 0 (0 = the container's CPU limit)",
    )
    metrics_dir: str = setting(
        "",
        "This instance's Prometheus multiprocess directory (emptied at start; empty: a fresh temporary one).",
        env="VISIONOPS_METRICS_DIR",
    )
    runtime: str = setting(
        "auto",
        "auto (the fastest measured at package time), torch, onnx, onnx-int8.",
        env="VISIONOPS_RUNTIME",
        choices=("auto", "torch", "onnx", "onnx-int8"),
    )

    def require_model(self) -> str:
        """The model URI, or a ConfigError that says how to set it."""
        if not self.model_uri:
            raise ConfigError(
                "no model to serve: set VISIONOPS_MODEL_URI (or `visionops serve --model URI`) to a bundle "
                "directory or s3:// URI"
            )
        return self.model_uri


#: Environment variable -> field name (the contract in docs/ARCHITECTURE.md; derived from the fields).
ENV_VARS = env_vars(ServingSettings)
