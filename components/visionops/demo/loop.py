"""The closed loop on a laptop: champion -> serving + drift sidecar + Prometheus + Alertmanager -> drift ->
alert -> retraining (local pipeline, warm start, new labeled data) -> gate -> roll forward.

Every part is a real process on 127.0.0.1: ``visionops serve`` (BentoML), ``visionops monitor`` (the drift
sidecar), ``prometheus`` (scraping both, with the alert rules of manifests/observability/prometheusrule.yaml:
a demo copy whose ``for:`` durations are shortened to seconds) and ``prometheus-alertmanager`` (whose webhook is
the sidecar's ``/alerts``). The sidecar's retraining trigger points at ``local://<output>/runs``: it starts
the training pipeline with :func:`visionops.pipeline.local_runs.launch_local_run`, the same code path that starts a
KFP run on a cluster. Without the Prometheus/Alertmanager binaries, the sidecar's own trigger (drift in
consecutive windows) starts the run instead, and the demo says so.

The new dataset version: the shifted images are selected, pre-labeled by the champion, exported for review, and
labeled by a scripted reviewer (their true labels) *before* the drift phase; the combined labels of the
champion's dataset plus the reviewed batch (:func:`visionops.labeling.write_combined_labels`) are the
retraining run's ``data_uri`` and the champion's dataset is its ``golden_uri``: the run's ingest step writes the
new version with the golden set carried over unchanged (checked afterwards). On a cluster the same parameters
come from ``--kfp-params`` of the sidecar (or the labeling pipeline that prepares them).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops.errors import VisionOpsError
from visionops.pipeline.local_runs import CLI

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[3]
RULES_MANIFEST = ROOT / "manifests" / "observability" / "prometheusrule.yaml"
DRIFT_ALERT = "VisionOpsDriftPersisting"
#: alerts that Alertmanager routes to the retraining webhook (as manifests/observability/alertmanager-config.yaml)
RETRAIN_ALERTS = (DRIFT_ALERT, "VisionOpsLivePrecisionBelowTarget")
DEMO_FOR = "5s"
SERVING_JOB, MONITOR_JOB = "visionops-serving", "visionops-drift-monitor"

#: The demo's gate (printed at the start): the full policy (precision >= 0.95 proven at 95% confidence, golden
#: precision, behaviour tests, no recall loss against the champion) except the serving budget's timing rules,
#: which are reported, not enforced: latency and throughput measured on a shared laptop say little.
DEMO_GATE: dict[str, Any] = {
    "max_p95_latency_ms": 0.0,
    "gate_overrides": {"min_throughput": "none", "max_memory_mb": "none"},
}
#: The test's gate: proves the wiring (both runs blessed for sure), not model quality.
TINY_GATE: dict[str, Any] = {
    "target_precision": 0.3,
    "max_p95_latency_ms": 0.0,
    "gate_overrides": {
        "confidence": 0.5,
        "min_invariance_rate": "none",
        "min_directional_rate": "none",
        "min_functionality_rate": "none",
        "min_throughput": "none",
        "max_memory_mb": "none",
        "require_golden_precision": False,
        "recall_tolerance": 1.0,
        "fpr_tolerance": "none",
        "behaviour_samples": 8,
        "latency_runs": 5,
    },
}


class LoopFailed(VisionOpsError):
    """A stage of the loop demo failed (the timeline says which, the logs under the output say why)."""


@dataclass
class LoopConfig:
    """The demo's scale. The defaults finish in minutes on 2 CPU cores; :meth:`tiny` is the test's scale."""

    output: Path
    #: images and size of the champion's data: those of `make run` (visionops.pipeline.local.DEMO_COUNT/SIZE)
    count: int = 1000
    size: int = 64
    #: champion epochs (None: the laptop recipe of visionops.pipeline.local.LOCAL_DEFAULTS)
    epochs: int | None = None
    retrain_epochs: int = 3
    traffic: int = 160
    window_size: int = 80
    review_budget: int = 120
    cooldown_s: float = 600.0
    use_observability: bool | None = None  # None: when the binaries are installed
    stage_timeout_s: float = 600.0
    seed: int = 0
    reference_split: str = "val"
    gate: dict[str, Any] = field(default_factory=lambda: dict(DEMO_GATE))

    @classmethod
    def tiny(cls, output: Path, **changes: Any) -> LoopConfig:
        values: dict[str, Any] = dict(
            count=400,
            size=32,
            epochs=4,
            retrain_epochs=1,
            traffic=100,
            window_size=50,
            review_budget=40,
            gate=dict(TINY_GATE),
        )
        values.update(changes)
        return cls(output=Path(output), **values)


@dataclass
class LoopResult:
    """What happened: the timeline, the outcome of each check, and where everything is."""

    ok: bool
    timeline: list[dict[str, Any]]
    checks: dict[str, bool]
    summary_html: Path
    summary_json: Path
    info: dict[str, Any] = field(default_factory=dict)


class Timeline:
    """Events with their time and artifact; each is printed as it happens."""

    def __init__(self, echo: Callable[[str], None]) -> None:
        self.started = time.monotonic()
        self.events: list[dict[str, Any]] = []
        self.echo = echo

    def add(self, stage: str, message: str, artifact: str | Path | None = None, *, ok: bool = True) -> None:
        event = {
            "t_s": round(time.monotonic() - self.started, 1),
            "time": datetime.now(UTC).isoformat(timespec="seconds"),
            "stage": stage,
            "message": message,
            "artifact": str(artifact) if artifact else "",
            "ok": ok,
        }
        self.events.append(event)
        mark = "" if ok else "FAILED: "
        where = f"  [{artifact}]" if artifact else ""
        self.echo(f"[{event['t_s']:7.1f}s] {stage:<10} {mark}{message}{where}")


# -- processes ----------------------------------------------------------------------------------------------
class Proc:
    """A child process in its own process group (BentoML starts workers), logging to a file."""

    def __init__(self, name: str, argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.name, self.log_path = name, log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
                start_new_session=True,
            )

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        stop_group(self.proc.pid, self.proc)


def stop_group(pid: int, proc: subprocess.Popen | None = None, timeout: float = 15.0) -> None:
    """SIGTERM the process group of ``pid``, then SIGKILL what is left after ``timeout``."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            os.killpg(pid, 0)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)


def _get_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.load(r)


def wait_http(url: str, proc: Proc, timeout: float) -> None:
    """Wait until ``url`` answers 200 (raise when the process exits or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise LoopFailed(
                f"{proc.name} exited ({proc.proc.returncode}) before it was ready; see {proc.log_path}"
            )
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except (OSError, urllib.error.HTTPError):
            pass
        time.sleep(0.5)
    raise LoopFailed(f"{proc.name} not ready at {url} after {timeout:.0f}s; see {proc.log_path}")


def visionops_argv(*args: str) -> list[str]:

    return [*CLI, *args]


# -- data ---------------------------------------------------------------------------------------------------
def shifted_images(output: Path, *, count: int, size: int, seed: int) -> str:
    """Images of the shifted world: a new background, darker and greyscale (labels.csv kept)."""
    import numpy as np
    from PIL import Image

    from visionops.data.synth import generate

    generate(str(output), count=count, size=size, seed=seed, shift="new_background")
    for path in sorted(output.glob("*/*.png")):
        with Image.open(path) as img:
            grey = np.asarray(img.convert("L"), dtype=np.float32) * 0.45
        Image.fromarray(grey.astype(np.uint8)).convert("RGB").save(path, format="PNG")
    return str(output)


def scripted_review(review_csv: str, images_root: Path) -> int:
    """The reviewer: fill ``label`` of every exported task with the true label (the image's class folder)."""
    import pandas as pd

    frame = pd.read_csv(review_csv, dtype=str, keep_default_na=False)
    labels = []
    for image in frame["image"]:
        path = Path(image.removeprefix("file://"))
        labels.append(path.parent.name if path.is_relative_to(images_root) else "")
    frame["label"] = labels
    frame["annotator"] = "scripted-reviewer"
    frame.to_csv(review_csv, index=False)
    return sum(1 for lab in labels if lab)


def prepare_batch(
    out: Path, shifted: str, champion_uri: str, dataset_uri: str, cfg: LoopConfig, tl: Timeline
) -> str:
    """select -> prelabel -> export -> scripted review -> import -> combined labels (the retraining data_uri)."""
    from visionops.labeling import export, import_reviews, prelabel, select, write_combined_labels

    lab = out / "labeling"
    selection = str(lab / "selection")
    select(shifted, selection, budget=cfg.review_budget, bundle_uri=champion_uri, seed=cfg.seed, workers=2)
    prelabel(selection, champion_uri)
    review = export(selection, str(lab / "review.csv"), format="csv")
    n = scripted_review(review, Path(shifted).resolve())
    tl.add("labeling", f"{n} shifted images selected, pre-labeled by the champion and reviewed", review)
    result = import_reviews(review, selection_uri=selection, output=str(lab / "import"), format="csv")
    accuracy = result.report.get("agreement", {}).get("all", {}).get("accuracy", {}).get("value")
    shown = "n/a" if accuracy is None else f"{accuracy:.0%}"
    tl.add(
        "labeling",
        f"reviews imported ({result.reviewed} labels; the champion's pre-labels were right for {shown})",
        result.batch_uri,
    )
    # at the loop's root: every image it names (datasets, reviewed traffic) lies below it, so ingestion's
    # confinement to the CSV's directory holds without --allow-outside-source
    combined = write_combined_labels(dataset_uri, result.batch_uri, str(out / "retrain-labels.csv"))
    tl.add("data", "next dataset's labels = champion's dataset + reviewed batch (golden set kept)", combined)
    return combined


# -- traffic ------------------------------------------------------------------------------------------------
def classify(url: str, path: Path, timeout: float = 60.0, retries: int = 5) -> dict:
    """POST one image; a 503 (serving's batch queue is full on a busy laptop) is retried, as a client would."""
    import httpx

    for attempt in range(retries + 1):
        response = httpx.post(
            f"{url}/classify", files={"image": (path.name, path.read_bytes(), "image/png")}, timeout=timeout
        )
        if response.status_code != 503 or attempt == retries:
            break
        time.sleep(0.5 * (attempt + 1))
    if response.status_code != 200:
        raise LoopFailed(f"serving answered {response.status_code} for {path.name}: {response.text[:200]}")
    return response.json()


def traffic_order(folder: Path, seed: int) -> list[Path]:
    """The images of an ImageFolder in a seeded random order (live traffic mixes the classes)."""
    import random

    images = sorted(folder.glob("*/*.png"))
    random.Random(seed).shuffle(images)
    return images


def replay(url: str, images: list[Path], *, stop: threading.Event | None = None, workers: int = 2) -> int:
    """POST images to serving (``workers`` at a time); stops early when ``stop`` is set. Returns the count."""
    sent = 0
    with ThreadPoolExecutor(workers) as pool:
        for start in range(0, len(images), workers):
            if stop is not None and stop.is_set():
                break
            list(pool.map(lambda p: classify(url, p), images[start : start + workers]))
            sent += len(images[start : start + workers])
    return sent


def wait_windows(monitor_url: str, n: int, timeout: float, since: float) -> dict:
    """Wait until the sidecar computed a window after ``since`` (epoch seconds) with at least ``n`` rows."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        latest = _get_json(f"{monitor_url}/drift")
        if latest.get("status") in ("ok", "drift") and float(latest.get("timestamp") or 0) > since:
            return latest
        time.sleep(0.5)
    raise LoopFailed(f"the sidecar computed no drift window within {timeout:.0f}s")


# -- the loop -----------------------------------------------------------------------------------------------
class Loop:
    """The demo's state; :meth:`run` does it all and always cleans up."""

    def __init__(self, cfg: LoopConfig, echo: Callable[[str], None] = print) -> None:
        self.cfg = cfg
        self.out = Path(cfg.output).resolve()
        self.tl = Timeline(echo)
        self.echo = echo
        self.checks: dict[str, bool] = {}
        self.info: dict[str, Any] = {}
        self.procs: dict[str, Proc] = {}
        self.observers: list[Any] = []

    # processes
    def start_serving(
        self, model_uri: str, monitor_url: str, tag: str, env: dict[str, str] | None = None
    ) -> str:
        from visionops.demo.observability import free_port

        port = self.info.setdefault("serving_port", free_port())
        proc = Proc(
            "serving",
            visionops_argv(
                "serve",
                "--model",
                model_uri,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--monitor-url",
                monitor_url,
                "--max-latency-ms",
                "5000",  # the budget: every image within 5 s (a busy laptop queues, it need not refuse)
            ),
            self.out / "logs" / f"serving-{tag}.log",
            env={
                "VISIONOPS_INGEST_TOKEN_FILE": str(self.ingest_token_file()),
                **(env or {}),
            },  # sent with rows
        )
        self.procs["serving"] = proc
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, self.cfg.stage_timeout_s)
        return url

    def start_monitor(
        self, model_uri: str, params: dict, trigger_windows: int, tag: str, env: dict[str, str] | None = None
    ) -> str:
        from visionops.demo.observability import free_port

        port = self.info.setdefault("monitor_port", free_port())
        cfg = self.cfg
        argv = [
            *CLI, "monitor",
            "--model", model_uri, "--host", "127.0.0.1", "--port", str(port),
            "--window-size", str(cfg.window_size), "--drift-every-rows", str(cfg.window_size),
            "--drift-every-seconds", "2", "--trigger-windows", str(trigger_windows),
            "--cooldown", str(cfg.cooldown_s), "--kfp-host", f"local://{self.out / 'runs'}",
            "--kfp-params", json.dumps(params), "--report-uri", str(self.out / "reports" / "drift"),
        ]  # fmt: skip
        env = {
            "VISIONOPS_REPORT_EVERY_SECONDS": "1",
            "VISIONOPS_ALERT_TOKEN_FILE": str(self.alert_token_file()),
            "VISIONOPS_INGEST_TOKEN_FILE": str(self.ingest_token_file()),
            **(env or {}),
        }
        proc = Proc("monitor", argv, self.out / "logs" / f"monitor-{tag}.log", env=env)
        self.procs["monitor"] = proc
        url = f"http://127.0.0.1:{port}"
        wait_http(f"{url}/readyz", proc, cfg.stage_timeout_s)
        return url

    def alert_token_file(self) -> Path:
        """The sidecar's alert token for this demo run (random, mode 0600): the sidecar refuses /alerts
        without it, and the demo's Alertmanager sends it (``http_config.authorization.credentials_file``)."""
        return self.token_file("alert-token")

    def ingest_token_file(self) -> Path:
        """The token serving sends with its rows to the sidecar's /ingest (the sidecar refuses rows without it)."""
        return self.token_file("ingest-token")

    def token_file(self, name: str) -> Path:
        """A random token for this demo run in ``secrets/<name>`` (mode 0600), created on first use."""
        import secrets

        path = self.out / "secrets" / name
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(secrets.token_urlsafe(32))
        return path

    def stop_all(self) -> None:
        runs = self.out / "runs"
        for request in sorted(runs.glob("*/request.json")) if runs.exists() else []:
            pid = json.loads(request.read_text()).get("pid")
            if pid and not (request.parent / "status.json").exists():  # still running: stop it too
                stop_group(int(pid))
        for name in ("serving", "monitor"):
            if name in self.procs:
                self.procs.pop(name).stop()
        for observer in self.observers:
            with contextlib.suppress(Exception):
                observer.stop()
        self.observers.clear()

    def check(self, name: str, ok: bool, stage: str, message: str, artifact: Any = None) -> bool:
        self.checks[name] = bool(ok)
        self.tl.add(stage, message, artifact, ok=bool(ok))
        return bool(ok)

    def run(self) -> LoopResult:
        """Run every stage; processes are stopped whatever happens (Ctrl-C included), the summary is written."""
        interrupted = False
        try:
            self._run()
        except KeyboardInterrupt:
            interrupted = True
            self.check("interrupted", False, "loop", "interrupted (Ctrl-C): stopping every process")
        except Exception as exc:  # the timeline and summary still get written
            log.debug("loop failed", exc_info=True)
            self.check("completed", False, "loop", f"{type(exc).__name__}: {exc}")
        finally:
            self.stop_all()
        result = self.write_summary()
        if interrupted:
            raise KeyboardInterrupt
        return result

    def _run(self) -> None:
        from visionops.bundle import read_meta
        from visionops.data.synth import generate
        from visionops.deploy import read_current_model
        from visionops.drift.reference import attach_reference
        from visionops.pipeline.local import run_local

        cfg, out, tl = self.cfg, self.out, self.tl
        out.mkdir(parents=True, exist_ok=True)
        tl.add("start", f"closed-loop demo in {out}")

        # 1. champion
        data = generate(str(out / "data" / "synthetic"), count=cfg.count, size=cfg.size, seed=cfg.seed)
        tl.add("data", f"{cfg.count} synthetic images drawn", data)
        state_dir = out / "deployment"
        params = {"image_size": cfg.size, "deploy_state_dir": str(state_dir), **cfg.gate}
        if cfg.epochs:
            params["epochs"] = cfg.epochs
        tl.add("gate", f"gate for this demo: {json.dumps(cfg.gate, sort_keys=True)}")
        tl.add("pipeline", "training the champion with the local pipeline (ingest, validate, train, gate, "
                           "package, deploy) ...")  # fmt: skip
        champion = run_local(out / "champion", data_uri=data, params=params, seed=cfg.seed)
        if not self.check(
            "champion_blessed", champion.blessed, "gate",
            f"champion {'BLESSED' if champion.blessed else 'REFUSED'} in {champion.seconds:.0f}s: "
            + "; ".join(champion.decision.get("reasons", [])[:3]),
            champion.paths.get("decision"),
        ):  # fmt: skip
            raise LoopFailed("the first model was refused by the gate: no champion to serve")
        deployed = read_current_model(state_dir) or {}
        champion_uri = str(deployed.get("model_uri") or champion.paths["model bundle"])
        dataset_v1 = str(champion.paths["dataset"])
        tl.add("deploy", "local deploy target recorded the champion", state_dir / "current_model.json")
        self.info.update(champion_uri=champion_uri, dataset_v1=dataset_v1,
                         champion_card=str(champion.paths.get("model card", "")))  # fmt: skip
        if cfg.reference_split != "val":  # training already stored a reference profiled from the val split
            attach_reference(champion_uri, dataset_v1, split=cfg.reference_split)
        champion_version = read_meta(champion_uri)["model_version"]
        tl.add("drift", f"drift reference of {champion_version} profiled from the {cfg.reference_split} split",
               Path(champion_uri) / "drift")  # fmt: skip

        # traffic and the review batch (prepared before the drift phase: its URI is a retraining parameter)
        normal = Path(generate(str(out / "traffic" / "normal"), count=cfg.traffic, size=cfg.size,
                               seed=cfg.seed + 101))  # fmt: skip
        shifted = Path(shifted_images(out / "traffic" / "shifted", count=cfg.traffic + cfg.review_budget,
                                      size=cfg.size, seed=cfg.seed + 202))  # fmt: skip
        tl.add("data", f"traffic drawn: {cfg.traffic} unshifted, {cfg.traffic + cfg.review_budget} shifted "
                       "(darker, greyscale, new background)", out / "traffic")  # fmt: skip
        combined = prepare_batch(out, str(shifted), champion_uri, dataset_v1, cfg, tl)
        retrain_params = {
            "data_uri": combined,
            "golden_uri": dataset_v1,
            "epochs": cfg.retrain_epochs,
            "image_size": cfg.size,
            "deploy_state_dir": str(state_dir),
            "seed": cfg.seed,
            **cfg.gate,
        }

        # 2. serving, sidecar, Prometheus, Alertmanager
        observability = self._observability_available()
        trigger_windows = 10_000 if observability else 2  # with Alertmanager, the alert starts the run
        monitor_url = self.start_monitor(champion_uri, retrain_params, trigger_windows, "v1")
        tl.add("monitor", f"drift sidecar up (window {cfg.window_size} rows, trigger -> local://{out / 'runs'})",
               self.procs["monitor"].log_path)  # fmt: skip
        serving_url = self.start_serving(champion_uri, monitor_url, "v1")
        tl.add("serving", f"serving {champion_version} at {serving_url}", self.procs["serving"].log_path)
        prometheus = self._start_observability(serving_url, monitor_url) if observability else None

        # 3a. unshifted traffic: no alarm
        normal_images = traffic_order(normal, cfg.seed)
        since = time.time()
        replay(serving_url, normal_images)
        latest = wait_windows(monitor_url, 1, cfg.stage_timeout_s, since)
        self.check(
            "no_false_alarm", latest["status"] == "ok", "drift",
            f"unshifted traffic ({len(normal_images)} images): drift share {latest.get('share', 0):.2f}, "
            f"status {latest['status']}", f"{monitor_url}/drift",
        )  # fmt: skip

        # 3b. shifted traffic until the trigger starts a run
        run_id = self._drift_until_run(serving_url, monitor_url, traffic_order(shifted, cfg.seed), prometheus)
        if run_id is None:
            raise LoopFailed("drift never started a retraining run (see the sidecar log)")
        self.stop_traffic_and_report(monitor_url)

        # 3c. the retraining run
        from visionops.pipeline.local_runs import wait_for_run

        status = wait_for_run(out / "runs", run_id, timeout=cfg.stage_timeout_s)
        run_dir = out / "runs" / run_id
        if not self.check("retrain_succeeded", status["state"] == "succeeded", "pipeline",
                          f"retraining run {run_id} {status['state']}", run_dir / "run.log"):  # fmt: skip
            raise LoopFailed(f"the retraining run failed; see {run_dir / 'run.log'}")
        self._after_retrain(run_dir, champion_uri, champion_version, dataset_v1, monitor_url)

    def _observability_available(self) -> bool:
        from visionops.demo.observability import ALERTMANAGER_BINARIES, PROMETHEUS_BINARIES, find_binary

        have = bool(find_binary(PROMETHEUS_BINARIES) and find_binary(ALERTMANAGER_BINARIES))
        wanted = self.cfg.use_observability
        if wanted and not have:
            raise LoopFailed("prometheus / prometheus-alertmanager are not installed (make system-deps)")
        use = have if wanted is None else wanted
        if not use:
            self.tl.add("monitor", "Prometheus/Alertmanager not used (not installed or turned off): the sidecar's "
                                   "own trigger (drift in 2 consecutive windows) starts retraining")  # fmt: skip
        self.info["observability"] = use
        return use

    def _start_observability(self, serving_url: str, monitor_url: str):
        import yaml

        from visionops.demo.observability import Alertmanager, Prometheus, rules_from_manifest, shorten_for

        rules = shorten_for(rules_from_manifest(RULES_MANIFEST), DEMO_FOR)
        rules_copy = self.out / "observability" / "rules.demo.yaml"
        rules_copy.parent.mkdir(parents=True, exist_ok=True)
        rules_copy.write_text(
            f"# {RULES_MANIFEST.name} with every `for:` shortened to {DEMO_FOR} for the demo\n"
            + yaml.safe_dump(rules, sort_keys=False)
        )
        am = Alertmanager(
            f"{monitor_url}/alerts", alertnames=RETRAIN_ALERTS, credentials_file=self.alert_token_file()
        ).start()
        self.observers.append(am)
        prom = Prometheus(
            {
                SERVING_JOB: serving_url.removeprefix("http://"),
                MONITOR_JOB: monitor_url.removeprefix("http://"),
            },
            rules=rules,
            alertmanager=am.url,
            labels={"namespace": "visionops"},
        ).start()
        self.observers.append(prom)
        deadline = time.monotonic() + 60
        while not prom.targets_up() and time.monotonic() < deadline:
            time.sleep(0.5)
        self.check("prometheus_scrapes", prom.targets_up(), "monitor",
                   f"Prometheus {prom.url} scrapes serving and the sidecar; rules: {rules_copy.name} "
                   f"(for: {DEMO_FOR}); Alertmanager {am.url} -> {monitor_url}/alerts", rules_copy)  # fmt: skip
        self.info.update(prometheus=prom.url, alertmanager=am.url)
        return prom

    def _drift_until_run(self, serving_url: str, monitor_url: str, images: list[Path], prom) -> str | None:
        runs = self.out / "runs"
        before = set(runs.iterdir()) if runs.exists() else set()
        stop = threading.Event()
        sent = [0]

        def traffic() -> None:
            while not stop.is_set():
                sent[0] += replay(serving_url, images[: self.cfg.traffic], stop=stop)

        worker = threading.Thread(target=traffic, name="shifted-traffic", daemon=True)
        worker.start()
        self.tl.add("traffic", "replaying shifted traffic (darker, greyscale, new background) ...")
        seen: dict[str, bool] = {"drift": False, "alert": False}

        def poll() -> None:
            latest = _get_json(f"{monitor_url}/drift")
            if not seen["drift"] and latest.get("status") == "drift":
                seen["drift"] = True
                feats = ", ".join(latest.get("drifted_features", [])[:4])
                self.check("drift_detected", True, "drift",
                           f"drift detected: share {latest.get('share', 0):.2f} ({feats})",
                           f"{monitor_url}/report")  # fmt: skip
            if prom is not None and not seen["alert"]:
                firing = [a for a in prom.alerts() if a["labels"].get("alertname") == DRIFT_ALERT
                          and a["state"] == "firing"]  # fmt: skip
                if firing:
                    seen["alert"] = True
                    self.check("alert_fired", True, "alert",
                               f"Prometheus fired {DRIFT_ALERT} (active since {firing[0]['activeAt']}); "
                               "Alertmanager -> sidecar /alerts", f"{prom.url}/alerts")  # fmt: skip

        run_id = None
        deadline = time.monotonic() + self.cfg.stage_timeout_s
        try:
            while time.monotonic() < deadline and run_id is None:
                poll()
                new = sorted(p for p in runs.iterdir() if p not in before) if runs.exists() else []
                if new and (new[0] / "request.json").is_file():
                    run_id = new[0].name
                time.sleep(0.5)
            poll()  # the run may have started between two looks: the drift and the alert are still there
        finally:
            stop.set()
            worker.join(timeout=120)
        if not seen["drift"]:
            self.check("drift_detected", False, "drift", "the sidecar never reported drift")
        if prom is not None and not seen["alert"]:
            self.check("alert_fired", False, "alert", f"Prometheus never fired {DRIFT_ALERT}")
        if run_id is None:
            self.check("retrain_triggered", False, "trigger", "no retraining run started")
            return None
        request = json.loads((runs / run_id / "request.json").read_text())
        via = "Alertmanager webhook" if "alert-" in request["run_name"] else "the sidecar's own trigger"
        if self.info.get("observability"):
            self.check("alert_path", "alert-" in request["run_name"], "trigger",
                       f"retraining started by {via}", runs / run_id / "request.json")  # fmt: skip
        self.check("retrain_triggered", True, "trigger",
                   f"run {run_id} ({request['run_name']}) started via {via} after {sent[0]} shifted requests: "
                   f"warm start from the champion, data {Path(request['params']['data_uri']).name}",
                   runs / run_id / "request.json")  # fmt: skip
        return run_id

    def stop_traffic_and_report(self, monitor_url: str) -> None:
        drift_dir = self.out / "reports" / "drift"
        deadline = time.monotonic() + 15
        while not (drift_dir / "latest.html").exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        if (drift_dir / "latest.html").exists():
            self.info["drift_report"] = str(drift_dir / "latest.html")
            self.tl.add("drift", "drift report written by the sidecar", drift_dir / "latest.html")

    def _after_retrain(self, run_dir: Path, champion_uri: str, champion_version: str, dataset_v1: str,
                       monitor_url: str) -> None:  # fmt: skip
        from visionops.bundle import read_meta
        from visionops.data.manifest import load_dataset
        from visionops.deploy import read_current_model
        from visionops.drift.reference import attach_reference
        from visionops.pipeline.local import collect

        roots = [p for p in (run_dir / "output" / "pipeline_root").iterdir() if p.is_dir()]
        result = collect(max(roots, key=lambda p: p.stat().st_mtime), output_dir=run_dir / "output")
        new_dataset = str(result.paths["dataset"])
        golden_same = load_dataset(new_dataset).golden_version == load_dataset(dataset_v1).golden_version
        self.check("golden_untouched", golden_same, "data",
                   f"new dataset version {load_dataset(new_dataset).version}: golden set "
                   f"{'unchanged' if golden_same else 'CHANGED'}", new_dataset)  # fmt: skip
        reasons = "; ".join(result.decision.get("reasons", [])[:4])
        verdict = "BLESSED" if result.blessed else "REFUSED"
        self.tl.add("gate", f"challenger {verdict}: {reasons}", result.paths.get("decision"))
        self.info.update(decision=result.decision, challenger_card=str(result.paths.get("model card", "")))
        if not result.blessed:
            self.info["refused_reasons"] = result.decision.get("reasons", [])
            return
        state_dir = self.out / "deployment"
        deployed = read_current_model(state_dir) or {}
        new_uri = str(deployed.get("model_uri", ""))
        if not self.check("deployed", bool(new_uri) and new_uri != champion_uri, "deploy",
                          f"local deploy target points at {new_uri}", state_dir / "current_model.json"):  # fmt: skip
            return
        if self.cfg.reference_split != "val":  # training already stored a val-split reference
            attach_reference(new_uri, new_dataset, split=self.cfg.reference_split)
        new_version = read_meta(new_uri)["model_version"]
        for name in ("serving", "monitor"):
            self.procs.pop(name).stop()
        monitor_url = self.start_monitor(new_uri, {}, 2, "v2")
        serving_url = self.start_serving(new_uri, monitor_url, "v2")
        answer = classify(serving_url, next(iter(sorted((self.out / "traffic" / "shifted").glob("*/*.png")))))
        served = answer.get("model_version")
        self.check("served_version_changed", served == new_version and served != champion_version, "serving",
                   f"serving restarted on the new model: answers come from {served} (was {champion_version})",
                   self.procs["serving"].log_path)  # fmt: skip
        self.info.update(new_model_uri=new_uri, new_version=new_version, champion_version=champion_version)

    # -- summary ------------------------------------------------------------------------------------------
    def write_summary(self) -> LoopResult:
        from visionops.reports import escape, html_page, html_table, write_text_atomic

        ok = bool(self.checks) and all(self.checks.values()) and "completed" not in self.checks
        data = {
            "ok": ok,
            "config": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(self.cfg).items()},
            "checks": self.checks,
            "timeline": self.tl.events,
            "info": self.info,
            "seconds": round(time.monotonic() - self.tl.started, 1),
        }
        self.out.mkdir(parents=True, exist_ok=True)
        json_path = write_text_atomic(self.out / "summary.json", json.dumps(data, indent=2, default=str))
        rows = [{**e, "ok": "ok" if e["ok"] else "fail"} for e in self.tl.events]
        checks = [{"check": k, "result": "ok" if v else "fail"} for k, v in self.checks.items()]
        verdict = "completed" if ok else "FAILED"
        reasons = self.info.get("refused_reasons")
        sections = [
            ("Outcome", f"<p>The loop {verdict} in {data['seconds']:.0f} s.</p>"
                        + (f"<p>The challenger was refused: {escape('; '.join(reasons))}</p>" if reasons else "")),
            ("Checks", html_table(checks, classes={"ok": "pass", "fail": "fail"})),
            *([("Before / after on the held-out slice", html_table(self.info["before_after"]))]
              if self.info.get("before_after") else []),
            ("Timeline", html_table(rows, ["t_s", "time", "stage", "message", "artifact", "ok"],
                                    classes={"ok": "pass", "fail": "fail"})),
            ("Where things are", html_table([{"what": k, "value": v} for k, v in self.info.items()
                                             if isinstance(v, str | int | float | bool)])),
        ]  # fmt: skip
        html_path = write_text_atomic(
            self.out / "summary.html",
            html_page("VisionOps closed loop", sections, subtitle=f"output: {self.out}"),
        )
        self.echo("\nTimeline (seconds since start, stage, event, artifact):")
        for e in self.tl.events:
            mark = "" if e["ok"] else "FAILED: "
            self.echo(
                f"  {e['t_s']:7.1f}s  {e['stage']:<9} {mark}{e['message']}"
                + (f"\n{'':20}-> {e['artifact']}" if e["artifact"] else "")
            )
        self.echo(f"\nloop {verdict}: summary {html_path} (JSON {json_path})")
        return LoopResult(ok, self.tl.events, self.checks, html_path, json_path, self.info)


def run_loop(cfg: LoopConfig, echo: Callable[[str], None] = print) -> LoopResult:
    """Run the closed-loop demo (see the module docstring); ``result.ok`` is False when any stage failed."""
    return Loop(cfg, echo).run()
