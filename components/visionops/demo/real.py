"""``visionops demo loop --real``: the closed loop on real photos (issue 20).

The champion trains on the ``lfw_5590`` photos of faces-glasses (50/50). Production is the ``net_7876`` photos
of faces-stream at their natural glasses share (3.6%): another source and another prevalence. The same real
processes as the synthetic loop (:mod:`visionops.demo.loop`): ``visionops serve`` with payload capture, the
drift sidecar, Prometheus and Alertmanager. When the drift alert reaches the sidecar's ``/alerts`` webhook, the
sidecar's trigger (in dry-run: it records the episode, :func:`_wait_for_trigger` sees it) hands over to the
retraining job below, which:

1. selects a review batch within the label budget from the *captured* traffic (uncertainty + random share);
2. has a scripted reviewer answer with the folder labels (by sha256) through the labeling module;
3. merges into a new dataset version whose golden set is extended with production-domain images at the
   production prevalence (:func:`merge_reviewed`);
4. warm-starts the champion and gates at the production prevalence against it (:func:`gate_params`);
5. rolls serving forward only if blessed.

A held-out slice of production that no step sees measures champion and new model at their own thresholds.
"""

from __future__ import annotations

import inspect
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from visionops.demo.loop import DEMO_GATE, Loop, LoopConfig, LoopFailed, _get_json, classify, replay
from visionops.demo.sources import RealSource, Slice, held_out_metrics
from visionops.policy import POSITIVE_CLASS

SHARED_DATA = Path(__file__).resolve().parents[4] / "shared" / "data"


@dataclass
class RealLoopConfig(LoopConfig):
    """The real loop's scale: <= 20 minutes on 2 cores with small_cnn at 64 px (30 epochs: not yet measured end to end)."""

    champion_dir: Path = SHARED_DATA / "faces-glasses"
    stream_dir: Path = SHARED_DATA / "faces-stream"
    champion_count: int | None = None  # all 1,120 lfw_5590 photos
    calm: int = 160
    traffic: int = 1600
    held_out: int = 1500
    review_budget: int = 300
    extend_golden: int = 200
    #: serve this bundle as the champion instead of training one (its lineage names its dataset)
    champion_uri: str | None = None
    epochs: int | None = 30
    retrain_epochs: int = 4
    window_size: int = 100
    #: measured (load 8-9): 64 px x 15 epochs -> val AUC 0.92; 96 px x 20 -> 0.86, refused by the gate
    size: int = 64
    gate: dict[str, Any] = field(default_factory=lambda: dict(DEMO_GATE))

    @classmethod
    def reduced(cls, output: Path, **changes: Any) -> RealLoopConfig:
        """The test's scale: the same champion (a weaker one is refused by the gate: nothing to serve), less
        traffic, a smaller budget and one retraining epoch (the wiring and the table, not the recovery)."""
        values: dict[str, Any] = dict(
            calm=100, traffic=600, held_out=400, review_budget=120, extend_golden=60, retrain_epochs=1,
            window_size=60,
        )  # fmt: skip
        values.update(changes)
        return cls(output=Path(output), **values)


# -- the pieces that switch when the gate branch is merged --------------------------------------------------
def merge_reviewed(previous: str, batch: str, output: str, *, extend_golden: int, prevalence: float):
    """The single call site of the merge: golden extension at the production prevalence where the labeling
    module supports it (``merge_batch(extend_golden=, prevalence=)``), else a merge with the golden set kept."""
    from visionops.labeling.merge import merge_batch

    if "extend_golden" in inspect.signature(merge_batch).parameters:
        return merge_batch(previous, batch, output, extend_golden=extend_golden, prevalence=prevalence), True
    return merge_batch(previous, batch, output), False


def gate_params(prevalence: float) -> dict[str, Any]:
    """The single call site of the gate's prevalence: ``positive_prevalence`` where the pipeline has it."""
    from visionops.pipeline.training import pipeline_parameters

    return {"positive_prevalence": prevalence} if "positive_prevalence" in pipeline_parameters() else {}


def calm_slice(dataset_uri: str, count: int, seed: int) -> Slice:
    """Calm traffic: the champion dataset's golden (test) photos, at its own prevalence.

    Not the stream's photos of the champion's source: those hold 7.6% glasses against the reference's 50%, a
    prior shift the sidecar rightly reports (measured: drift share 0.25 on positive_prob, confidence and two
    embedding columns).
    """
    from visionops.data.manifest import load_dataset

    golden = load_dataset(dataset_uri).split("test")
    rows = golden.sample(n=min(count, len(golden)), random_state=seed)
    return Slice(list(rows["path"]), list(rows["label"]))


def training_labels(dataset_uri: str, output: Path) -> str:
    """``path,label,group`` of the dataset's train/val rows: the retraining run's data, ingested with
    ``golden=dataset_uri`` so that the (possibly extended) golden set is carried over and never trained on."""
    from visionops.data.manifest import load_dataset

    frame = load_dataset(dataset_uri).frame
    rows = frame[frame["split"] != "test"]
    output.parent.mkdir(parents=True, exist_ok=True)
    rows[["path", "label", "group"]].to_csv(output, index=False)
    return str(output)


def review_by_hash(review_csv: str, source: RealSource) -> int:
    """The scripted reviewer: each exported task gets the folder label of its image (found by sha256)."""
    import pandas as pd

    from visionops import storage

    frame = pd.read_csv(review_csv, dtype=str, keep_default_na=False)
    labels = [
        source.label_of(storage.read_bytes(image.removeprefix("file://"))) or "" for image in frame["image"]
    ]
    frame["label"], frame["annotator"] = labels, "scripted-reviewer"
    frame.to_csv(review_csv, index=False)
    return sum(1 for lab in labels if lab)


class RealLoop(Loop):
    """The synthetic loop's processes and checks, with a :class:`RealSource` and the labeling cycle inside the
    retraining job."""

    cfg: RealLoopConfig

    def _run(self) -> None:
        cfg, out, tl = self.cfg, self.out, self.tl
        out.mkdir(parents=True, exist_ok=True)
        source = RealSource(
            Path(cfg.champion_dir), Path(cfg.stream_dir), champion_count=cfg.champion_count,
            traffic_count=cfg.traffic, held_out_count=cfg.held_out, seed=cfg.seed,
        )  # fmt: skip
        prevalence = source.production_prevalence()
        traffic, held_out = source.production()
        tl.add("start", f"closed loop on real photos in {out}: champion on {source.champion_subset}, production "
                        f"{source.production_subset} at {prevalence:.1%} glasses; held-out slice {len(held_out)} "
                        f"images ({held_out.share(POSITIVE_CLASS):.1%}) that no step sees")  # fmt: skip
        if cfg.champion_uri:
            champion_uri, dataset_v1 = self._given_champion(cfg.champion_uri)
        else:
            champion_uri, dataset_v1 = self._champion(source.champion())
        monitor_url, serving_url, prom = self._production(champion_uri)

        calm = calm_slice(dataset_v1, cfg.calm, cfg.seed)
        since = time.time()
        replay(serving_url, [Path(p) for p in calm.paths])
        from visionops.demo.loop import wait_windows

        latest = wait_windows(monitor_url, 1, cfg.stage_timeout_s, since)
        self.check("no_false_alarm", latest["status"] == "ok", "drift",
                   f"calm traffic ({len(calm)} golden photos of the champion's data): drift share "
                   f"{latest.get('share', 0):.2f}, status {latest['status']}", f"{monitor_url}/drift")  # fmt: skip
        if not self._production_until_alert(serving_url, monitor_url, traffic, prom):
            raise LoopFailed("the production traffic never raised the drift alert")
        self.stop_traffic_and_report(monitor_url)
        new_uri, blessed = self._retrain(source, champion_uri, dataset_v1, prevalence)
        self._before_after(champion_uri, new_uri, held_out)
        if blessed:
            self._roll_forward(new_uri, champion_uri, calm)

    # -- stages ---------------------------------------------------------------------------------------------
    def _champion(self, data: Slice) -> tuple[str, str]:
        from visionops.bundle import read_meta
        from visionops.deploy import read_current_model
        from visionops.pipeline.local import run_local

        cfg, out = self.cfg, self.out
        labels = data.write_labels_csv(out / "data" / "champion-labels.csv")
        self.tl.add("pipeline", f"training the champion on {len(data)} photos ({data.share(POSITIVE_CLASS):.0%} glasses)"
                                " with the local pipeline ...", labels)  # fmt: skip
        params = {"image_size": cfg.size, "deploy_state_dir": str(out / "deployment"), "epochs": cfg.epochs,
                  **cfg.gate}  # fmt: skip
        champion = run_local(out / "champion", data_uri=labels, params=params, seed=cfg.seed)
        if not self.check("champion_blessed", champion.blessed, "gate",
                          f"champion {'BLESSED' if champion.blessed else 'REFUSED'} in {champion.seconds:.0f}s: "
                          + "; ".join(champion.decision.get("reasons", [])[:3]),
                          champion.paths.get("decision")):  # fmt: skip
            raise LoopFailed("the first model was refused by the gate: no champion to serve")
        uri = str(
            (read_current_model(out / "deployment") or {}).get("model_uri") or champion.paths["model bundle"]
        )
        version = read_meta(uri)["model_version"]
        self.info.update(
            champion_uri=uri, champion_version=version, dataset_v1=str(champion.paths["dataset"])
        )
        return uri, str(champion.paths["dataset"])

    def _given_champion(self, uri: str) -> tuple[str, str]:
        """An existing bundle as the champion (not gated here): its dataset from the bundle's lineage."""
        from visionops.bundle import read_meta

        meta = read_meta(uri)
        dataset = meta["lineage"]["dataset_uri"]
        self.tl.add("champion", f"champion given: {meta['model_version']} (trained on {dataset})", uri)
        self.info.update(champion_uri=uri, champion_version=meta["model_version"], dataset_v1=dataset)
        return uri, dataset

    def _production(self, champion_uri: str):
        """Sidecar (trigger in dry-run: the alert hands over to the retraining job), serving with capture, and
        Prometheus + Alertmanager."""
        observability = self._observability_available()
        monitor_url = self.start_monitor(champion_uri, {}, 10_000 if observability else 2, "v1",
                                         env={"VISIONOPS_TRIGGER_DRY_RUN": "true"})  # fmt: skip
        capture = self.out / "capture"
        serving_url = self.start_serving(champion_uri, monitor_url, "v1", env={
            "VISIONOPS_CAPTURE_URI": str(capture), "VISIONOPS_CAPTURE_RATE": "1.0"})  # fmt: skip
        self.info["capture"] = str(capture)
        self.tl.add("serving", f"serving {self.info['champion_version']} at {serving_url}, capturing every "
                               "request", capture)  # fmt: skip
        prom = self._start_observability(serving_url, monitor_url) if observability else None
        return monitor_url, serving_url, prom

    def _production_until_alert(self, serving_url: str, monitor_url: str, traffic: Slice, prom) -> bool:
        """Replay the production traffic (all of it: it is the capture the review batch is drawn from) and
        watch for drift, the alert and the trigger's episode."""
        done = threading.Event()
        worker = threading.Thread(target=lambda: (replay(serving_url, [Path(p) for p in traffic.paths]),
                                                  done.set()), daemon=True)  # fmt: skip
        worker.start()
        self.tl.add(
            "traffic",
            f"replaying {len(traffic)} production photos ({traffic.share(POSITIVE_CLASS):.1%} glasses)",
        )
        seen = {"drift": False, "alert": False, "trigger": False}
        deadline, grace = time.monotonic() + self.cfg.stage_timeout_s, None
        while time.monotonic() < deadline and not (done.is_set() and seen["trigger"]):
            self._poll(monitor_url, prom, seen)
            if done.is_set():  # the last windows and the alert's `for:` still need a moment
                grace = grace or time.monotonic() + 60
                if time.monotonic() > grace:
                    break
            time.sleep(0.5)
        worker.join(timeout=60)
        self.check(
            "drift_detected", seen["drift"], "drift", "the sidecar reported drift on production traffic"
        )
        if prom is not None:
            self.check("alert_fired", seen["alert"], "alert", "Prometheus fired the drift alert")
        self.check("retrain_triggered", seen["trigger"], "trigger",
                   "the alert reached the sidecar's trigger: the retraining job starts")  # fmt: skip
        return seen["trigger"]

    def _poll(self, monitor_url: str, prom, seen: dict[str, bool]) -> None:
        from visionops.demo.loop import DRIFT_ALERT

        latest = _get_json(f"{monitor_url}/drift")
        if not seen["drift"] and latest.get("status") == "drift":
            seen["drift"] = True
            self.tl.add("drift", f"drift: share {latest.get('share', 0):.2f} "
                                 f"({', '.join(latest.get('drifted_features', [])[:4])})")  # fmt: skip
        firing = (
            prom is not None
            and not seen["alert"]
            and any(
                a["labels"].get("alertname") == DRIFT_ALERT and a["state"] == "firing" for a in prom.alerts()
            )
        )
        if firing:
            seen["alert"] = True
            self.tl.add("alert", f"Prometheus fired {DRIFT_ALERT}; Alertmanager -> sidecar /alerts")
        if not seen["trigger"]:
            import urllib.request

            with urllib.request.urlopen(f"{monitor_url}/metrics", timeout=5) as r:
                text = r.read().decode()
            seen["trigger"] = any(
                line.startswith("visionops_retrain_triggered") and 'outcome="dry_run"' in line
                and not line.rstrip().endswith(" 0.0") for line in text.splitlines()
            )  # fmt: skip

    def _retrain(self, source: RealSource, champion_uri: str, dataset_v1: str, prevalence: float):
        """select from capture -> prelabel -> export -> scripted review -> import -> merge (golden extended)
        -> warm start -> gate at the production prevalence against the champion."""
        from visionops.labeling import export, import_reviews, prelabel, select
        from visionops.pipeline.local import run_local

        cfg, out, lab = self.cfg, self.out, self.out / "labeling"
        selection = str(lab / "selection")
        select(self.info["capture"], selection, budget=cfg.review_budget, bundle_uri=champion_uri, seed=cfg.seed,
               workers=2)  # fmt: skip
        prelabel(selection, champion_uri)
        review = export(selection, str(lab / "review.csv"), format="csv")
        n = review_by_hash(review, source)
        result = import_reviews(review, selection_uri=selection, output=str(lab / "import"), format="csv")
        self.info["labels_spent"] = n
        self.tl.add("labeling", f"{n} captured images selected within the budget of {cfg.review_budget} and "
                                "reviewed (scripted: the folder labels)", result.batch_uri)  # fmt: skip
        merged, extended = merge_reviewed(dataset_v1, result.batch_uri, str(out / "data" / "v2"),
                                          extend_golden=cfg.extend_golden, prevalence=prevalence)  # fmt: skip
        self.info.update(dataset_v2=merged.uri, golden_extended=extended)
        self.tl.add("data", f"dataset {merged.version}: golden {merged.golden_version} "
                            + ("extended with production photos at the production prevalence" if extended
                               else "kept (golden extension not available in this build)"), merged.uri)  # fmt: skip
        combined = training_labels(merged.uri, out / "data" / "retrain-labels.csv")
        params = {"golden_uri": merged.uri, "champion_uri": champion_uri, "warm_start": True,
                  "epochs": cfg.retrain_epochs, "image_size": cfg.size, "deploy_state_dir": str(out / "deployment"),
                  **cfg.gate, **gate_params(prevalence)}  # fmt: skip
        self.tl.add("pipeline", f"retraining: warm start from the champion, gate at prevalence "
                                f"{prevalence:.1%} against the champion on golden {merged.golden_version} ...")  # fmt: skip
        run = run_local(out / "retrain", data_uri=combined, params=params, seed=cfg.seed)
        verdict = "BLESSED" if run.blessed else "REFUSED"
        self.tl.add("gate", f"challenger {verdict}: " + "; ".join(run.decision.get("reasons", [])[:4]),
                    run.paths.get("decision"))  # fmt: skip
        self.info.update(decision=run.decision, verdict=verdict)
        return str(run.paths["model bundle"]), run.blessed

    def _before_after(self, champion_uri: str, new_uri: str, held_out: Slice) -> None:
        rows = []
        for role, uri in (("champion", champion_uri), ("new model", new_uri)):
            m = held_out_metrics(uri, held_out)
            fmt = lambda v, ci: "n/a" if v is None else f"{v:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]"  # noqa: E731
            rows.append({"model": role, "version": m["model_version"], "threshold": round(m["threshold"], 4),
                         "n": m["n"], "positives": m["positives"], "tp": m["tp"], "fp": m["fp"],
                         "precision [95% Wilson]": fmt(m["precision"], m["precision_ci"]),
                         "recall [95% Wilson]": fmt(m["recall"], m["recall_ci"])})  # fmt: skip
        self.info["before_after"] = rows
        for row in rows:
            self.tl.add("held-out", f"{row['model']}: precision {row['precision [95% Wilson]']}, recall "
                                    f"{row['recall [95% Wilson]']} at threshold {row['threshold']}")  # fmt: skip

    def _roll_forward(self, new_uri: str, champion_uri: str, calm: Slice) -> None:
        from visionops.bundle import read_meta
        from visionops.deploy import read_current_model

        deployed = str((read_current_model(self.out / "deployment") or {}).get("model_uri", ""))
        if not self.check("deployed", deployed not in ("", champion_uri), "deploy",
                          f"local deploy target points at {deployed}"):  # fmt: skip
            return
        for name in ("serving", "monitor"):
            self.procs.pop(name).stop()
        monitor_url = self.start_monitor(deployed, {}, 2, "v2")
        serving_url = self.start_serving(deployed, monitor_url, "v2")
        served = classify(serving_url, Path(calm.paths[0])).get("model_version")
        self.check("served_version_changed", served == read_meta(deployed)["model_version"], "serving",
                   f"serving answers from {served} (was {self.info['champion_version']})")  # fmt: skip


def run_real_loop(cfg: RealLoopConfig, echo=print):
    """Run the closed loop on real photos; ``result.ok`` is False when any stage failed."""
    return RealLoop(cfg, echo).run()
