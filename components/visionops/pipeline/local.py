"""Run the training pipeline on this machine with ``kfp.local`` — the same graph and components as the cluster.

``kfp.local.SubprocessRunner(use_venv=False)`` runs each component body as a subprocess of the current Python
environment (no containers, nothing installed). Cluster settings (GPU, /dev/shm, the Secret, resources) are
ignored locally: object-storage credentials, when needed, come from this shell's environment.

Without ``data_uri`` the embedded demo data is drawn first (:func:`visionops.data.synth.generate`), so
``visionops pipeline run --local`` (= ``make run``) needs nothing but an install.
"""

from __future__ import annotations

import json
import logging
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.errors import VisionOpsError

log = logging.getLogger(__name__)

#: The laptop recipe: a few minutes on 2 CPU cores. small_cnn (a spatial head) learns the synthetic faces in a
#: few epochs at 64 px; 20% validation images (about 100 positives of the 1,000 demo images) are what it takes
#: for the precision target's 95% lower confidence bound to be provable at all (with 30 positives it is not).
LOCAL_DEFAULTS: dict[str, Any] = {
    "architecture": "small_cnn",
    "image_size": 64,
    "epochs": 6,
    "batch_size": 32,
    "learning_rate": 0.003,
    "val_fraction": 0.2,
    "test_fraction": 0.2,
    "gpu_count": "0",
    "deploy_target": "local",
    "model_registry_uri": "",  # locally serving reads the pipeline's own output folder
}
DEMO_COUNT = 1000
DEMO_SIZE = 64


@dataclass
class LocalRunResult:
    """Where a local run put everything, and what the gate decided."""

    output_dir: Path
    run_dir: Path
    seconds: float
    decision: dict[str, Any]
    metrics: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    deployment: dict[str, Any] | None = None

    @property
    def blessed(self) -> bool:
        return bool(self.decision.get("blessed"))


class PipelineRunFailed(VisionOpsError):
    """A step of the local pipeline run failed (its log is above the error)."""


def _find(run_dir: Path, step: str, name: str) -> Path | None:
    path = run_dir / step / name
    return path if path.exists() else None


def _new_run_dir(root: Path, before: set[Path]) -> Path:
    from visionops.pipeline.training import PIPELINE_NAME

    runs = [p for p in root.glob(f"{PIPELINE_NAME}-*") if p.is_dir() and p not in before]
    if not runs:
        raise PipelineRunFailed(f"the local run left no run directory under {root}")
    return max(runs, key=lambda p: p.stat().st_mtime)


def run_local(
    output_dir: str | Path,
    *,
    data_uri: str | None = None,
    params: dict[str, Any] | None = None,
    demo_count: int = DEMO_COUNT,
    demo_size: int = DEMO_SIZE,
    seed: int = 0,
) -> LocalRunResult:
    """Run the training pipeline locally under ``output_dir`` and collect its outputs.

    ``params`` are pipeline parameters (see ``visionops.pipeline.training``) over :data:`LOCAL_DEFAULTS`; the
    run's artifacts land in ``output_dir/pipeline_root/<run>/<step>/``. A refused model is a successful run
    (``result.blessed`` is False and the decision says why); a failing step raises :class:`PipelineRunFailed`.
    """
    from kfp import local

    from visionops.pipeline.training import ClusterSettings, build_training_pipeline, coerce_parameters

    started = time.monotonic()
    output = Path(output_dir).resolve()
    output.mkdir(parents=True, exist_ok=True)
    if not data_uri:
        from visionops.data.synth import generate

        data_uri = str(output / "data" / "synthetic")
        log.info("no --data given: drawing %d synthetic demo images into %s", demo_count, data_uri)
        data_uri = generate(data_uri, count=demo_count, size=demo_size, seed=seed)
    # No retries locally: kfp.local honours the cluster's retry policy, and a local error only repeats.
    pipeline = build_training_pipeline(ClusterSettings(retries=0))
    arguments = coerce_parameters(
        {**LOCAL_DEFAULTS, "seed": seed, "deploy_state_dir": str(output / "deployment"), **(params or {})},
        pipeline,
    )
    arguments["data_uri"] = data_uri
    root = output / "pipeline_root"
    root.mkdir(exist_ok=True)
    before = set(root.iterdir())
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), raise_on_error=True)
    with warnings.catch_warnings():
        # kfp.local warns that our image name has no "python" in it: locally no image is used at all.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        # ... and that cluster settings (resources, GPU, display names) do nothing locally: by design.
        warnings.filterwarnings("ignore", message=".*have no effect in the current local runner.*")
        try:
            pipeline(**arguments)
        except RuntimeError as exc:
            plain = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))  # kfp.local colours its messages
            raise PipelineRunFailed(
                f"the local pipeline run failed: {plain} (the failing step's log is printed above; "
                f"its outputs are under {root})"
            ) from exc
    run_dir = _new_run_dir(root, before)
    return collect(run_dir, output_dir=output, seconds=time.monotonic() - started)


def collect(run_dir: Path, *, output_dir: Path, seconds: float = 0.0) -> LocalRunResult:
    """Read the verdict and metrics of a finished local run and locate its artifacts."""
    from visionops.pipeline.outputs import read_json

    decision_path = _find(run_dir, "evaluate", "decision")
    if decision_path is None:
        raise PipelineRunFailed(f"no evaluation decision in {run_dir}: did the evaluate step run?")
    paths = {
        "dataset": _find(run_dir, "ingest", "dataset"),
        "validation report": _find(run_dir, "validate", "report_html"),
        "model bundle": _find(run_dir, "evaluate", "candidate"),
        "model card": _find(run_dir, "evaluate", "model_card_html"),
        "decision": decision_path,
        "bento": _find(run_dir, "package", "bento"),
        "deployment record": _find(run_dir, "deploy", "record"),
    }
    bento_dir = paths["bento"]
    if bento_dir is not None and bento_dir.is_dir():
        paths["bento"] = next(iter(sorted(bento_dir.glob("*.bento"))), bento_dir)
    deployment_path = paths["deployment record"]
    metrics_path = _find(run_dir, "evaluate", "executor_output.json")
    return LocalRunResult(
        output_dir=output_dir,
        run_dir=run_dir,
        seconds=seconds,
        decision=read_json(decision_path),
        metrics=_logged_metrics(metrics_path),
        paths={name: path for name, path in paths.items() if path is not None},
        deployment=read_json(deployment_path) if deployment_path else None,
    )


def _logged_metrics(executor_output: Path | None) -> dict[str, Any]:
    """The scalars the evaluate step logged into its Metrics artifact (what the Kubeflow UI shows)."""
    if executor_output is None:
        return {}
    data = json.loads(executor_output.read_text())
    for artifact_list_name, artifact_list in (data.get("artifacts") or {}).items():
        if artifact_list_name == "metrics":
            artifacts = artifact_list.get("artifacts") or [{}]
            return dict(artifacts[0].get("metadata") or {})
    return {}


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "n/a" if value is None else str(value)


#: (label, logged metric name) shown in the summary, when the evaluation logged them.
SUMMARY_METRICS = (
    ("precision", "test.positive.precision"),
    ("recall", "test.positive.recall"),
    ("ROC AUC", "test.roc_auc"),
    ("accuracy", "test.accuracy"),
    ("threshold", "threshold.threshold"),
    ("p95 latency ms", "ops.latency_ms.p95"),
)


def _f1(metrics: dict[str, Any]) -> float | None:
    p, r = metrics.get("test.positive.precision"), metrics.get("test.positive.recall")
    return 2 * p * r / (p + r) if p is not None and r is not None and p + r > 0 else None


def format_summary(result: LocalRunResult) -> str:
    """The human summary printed at the end of ``visionops pipeline run --local``."""
    verdict = "BLESSED" if result.blessed else "REFUSED"
    lines = [f"VisionOps pipeline (local) finished in {result.seconds:.0f} s — verdict: {verdict}"]
    for reason in result.decision.get("reasons", []):
        lines.append(f"  - {reason}")
    metrics = result.metrics
    shown = [f"{label} {_fmt(metrics[key])}" for label, key in SUMMARY_METRICS if key in metrics]
    if _f1(metrics) is not None:
        shown.insert(2, f"F1 {_fmt(_f1(metrics))}")
    if shown:
        golden = result.decision.get("golden_version", "?")
        lines.append(f"  golden set {golden} (positive class): " + ", ".join(shown))
    if "threshold.target" in metrics:
        lines.append(
            f"  precision target {_fmt(metrics['threshold.target'])} (proven on the validation split)"
        )
    for name, path in result.paths.items():
        lines.append(f"  {name + ':':<19}{path}")
    if not result.blessed:
        lines.append(
            "  package and deploy were skipped (the model was refused); the decision record says why."
        )
    elif result.deployment:
        deployed = result.deployment
        where = deployed.get("state_file") or deployed.get("deployment") or ""
        lines.append(f"  deployed ({deployed.get('target')}): {deployed.get('model_uri')} {where}".rstrip())
    return "\n".join(lines)
