"""Which runtime serves a bundle: eager PyTorch, or ONNX Runtime on the bundle's fp32 or int8 graph.

``VISIONOPS_RUNTIME`` (``auto`` by default) asks; the bundle decides what it can give:

- ``torch``     -- the safetensors weights in eager PyTorch (always possible);
- ``onnx``      -- ``model.onnx``, when its export passed parity with PyTorch on the golden images;
- ``onnx-int8`` -- ``model.int8.onnx``, only when the gate evaluated THAT artifact and blessed it (its
  probabilities differ from PyTorch, so the fp32 gate decision does not cover it);
- ``auto``      -- the fastest of the servable runtimes as measured at package time (recorded in the bundle).

Anything that stops an ONNX runtime (no export, failed parity, missing or corrupt file, ONNX Runtime cannot
load it) falls back to PyTorch, and the reason is logged and kept in :attr:`Runtime.reason` (the service
exposes it in its logs and ``/readyz`` answer stays the same: a fallback still serves).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from visionops.errors import BundleError, ConfigError
from visionops.onnx_runtime import ARTIFACTS, RUNTIMES, artifact_model, cpu_limit_threads

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """The runtime chosen for a bundle: its ``name``, why (``reason``), and the ONNX model (None for torch)."""

    name: str
    reason: str
    model: Any = None
    requested: str = "auto"

    @property
    def fell_back(self) -> bool:
        return self.requested not in ("auto", "torch") and self.name == "torch"


def _int8_refusal(meta: dict[str, Any]) -> str | None:
    """Why the int8 artifact may not serve (None when the gate blessed exactly this file)."""
    verdict = (meta.get("runtime_evaluations") or {}).get("onnx-int8")
    if not verdict:
        return "the gate has not judged the int8 artifact (`visionops evaluate --runtime onnx-int8`)"
    evaluation = verdict.get("evaluation") or {}
    if not evaluation.get("blessed"):
        return (
            f"the gate refused the int8 artifact: {'; '.join(evaluation.get('reasons') or ['not blessed'])}"
        )
    recorded = (((meta.get("onnx") or {}).get("files") or {}).get(ARTIFACTS["onnx-int8"]) or {}).get("sha256")
    if verdict.get("artifact_sha256") != recorded:
        return (
            "the gate judged another int8 artifact than the bundle's (exported again since): re-run the gate"
        )
    return None


def servable(meta: dict[str, Any]) -> dict[str, str]:
    """Runtime -> why it is NOT servable for this bundle's metadata (a runtime absent from the map is)."""
    info = meta.get("onnx") or {}
    files = info.get("files") or {}
    blocked = {}
    for runtime, name in ARTIFACTS.items():
        if info.get("status") != "ok":
            blocked[runtime] = info.get("reason") or "the bundle has no ONNX export (run `visionops package`)"
        elif name not in files:
            blocked[runtime] = f"the bundle's export has no {name}"
    if "onnx-int8" not in blocked and (refusal := _int8_refusal(meta)):
        blocked["onnx-int8"] = refusal
    return blocked


def gated_threshold(meta: dict[str, Any], runtime: str) -> float | None:
    """The threshold the gate chose on ``runtime``'s own probabilities (int8), or None (torch's applies)."""
    verdict = (meta.get("runtime_evaluations") or {}).get(runtime) or {}
    return verdict.get("threshold") if runtime == "onnx-int8" else None


def choose(meta: dict[str, Any], requested: str) -> tuple[str, str]:
    """The runtime to try for ``requested`` and why (before any file is opened)."""
    if requested not in RUNTIMES:
        raise ConfigError(f"VISIONOPS_RUNTIME={requested!r} is not a runtime; valid: {', '.join(RUNTIMES)}")
    if requested == "torch":
        return "torch", "requested"
    blocked = servable(meta)
    if requested != "auto":
        if requested in blocked:
            return "torch", f"fallback from {requested}: {blocked[requested]}"
        return requested, "requested"
    speed = ((meta.get("onnx") or {}).get("speed") or {}).get("best_images_per_s") or {}
    candidates = {name: ips for name, ips in speed.items() if name == "torch" or name not in blocked}
    if not candidates:
        return "torch", "auto: no speed measured at package time"
    best = max(candidates, key=candidates.get)
    figures = ", ".join(f"{name} {ips:.0f} img/s" for name, ips in sorted(candidates.items()))
    return best, f"auto: fastest at package time ({figures})"


def load_runtime(bundle, requested: str = "auto", *, threads: int | None = None) -> Runtime:
    """Open the runtime for ``bundle``; any failure to open an ONNX artifact falls back to torch, logged."""
    name, reason = choose(bundle.meta, requested)
    if name == "torch":
        if reason.startswith("fallback"):
            log.warning("serving with torch: %s", reason)
        return Runtime("torch", reason, requested=requested)
    try:
        model = artifact_model(bundle, name, threads=threads or cpu_limit_threads())
    except BundleError as exc:
        reason = f"fallback from {name}: {exc}"
        log.warning("serving with torch: %s", reason)
        return Runtime("torch", reason, requested=requested)
    return Runtime(name, reason, model, requested=requested)
