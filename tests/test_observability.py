"""The real monitoring parts, for real: promtool unit tests for every alert of the PrometheusRule manifest (a
firing and a non-firing case each), a real Prometheus scraping a real serving process and a real drift sidecar
(every rule expression and every Grafana panel query returns data), and a real Alertmanager routing the drift
alert to the sidecar's /alerts, which starts exactly one KFP run per episode on a stand-in KFP API server.

The rules under test come from manifests/observability/prometheusrule.yaml (one source); the binaries are
Debian's prometheus, promtool and prometheus-alertmanager (skipped where absent, a failure in CI).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import ROOT, free_port, require_binary
from tests.test_drift_support import KfpStandIn, feature_bundle, wait_until

pytestmark = pytest.mark.integration

RULES = ROOT / "manifests" / "observability" / "prometheusrule.yaml"
DASHBOARD = ROOT / "manifests" / "observability" / "dashboards" / "visionops.json"
NS = 'namespace="visionops"'
POD = 'pod="p1"'


def manifest_rules() -> dict:
    from visionops.demo.observability import rules_from_manifest

    return rules_from_manifest(RULES)


def alert_rules() -> dict[str, dict]:
    return {r["alert"]: r for g in manifest_rules()["groups"] for r in g["rules"] if "alert" in r}


def expand(template: str, labels: dict[str, str], value: str) -> str:
    """An annotation template filled in as Prometheus does for the cases below."""
    text = re.sub(r"\{\{ \$value \| \w+ \}\}", value, template)
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], text)


# alert -> (input series firing, input series not firing, eval time, alert labels, rendered $value)
CASES: dict[str, tuple[list[dict], list[dict], str, dict[str, str], str]] = {
    # drift in every window for 35 min fires; drift for 20 min that then clears does not
    "VisionOpsDriftPersisting": (
        [{"series": f'visionops_drift_detected{{{NS}, {POD}, model_version="v7"}}', "values": "1x40"}],
        [{"series": f'visionops_drift_detected{{{NS}, {POD}, model_version="v7"}}', "values": "1x20 0x20"}],
        "35m",
        {"namespace": "visionops", "model_version": "v7", "severity": "warning"},
        "",
    ),
    # precision 0.90 on 80 labels fires; the same precision on 20 labels (too few to judge) does not
    "VisionOpsLivePrecisionBelowTarget": (
        [
            {"series": f"visionops_live_precision{{{NS}, {POD}}}", "values": "0.9x40"},
            {"series": f"visionops_live_labels_window{{{NS}, {POD}}}", "values": "80x40"},
        ],
        [
            {"series": f"visionops_live_precision{{{NS}, {POD}}}", "values": "0.9x40"},
            {"series": f"visionops_live_labels_window{{{NS}, {POD}}}", "values": "20x40"},
        ],
        "20m",
        {"namespace": "visionops", "pod": "p1", "severity": "critical"},
        "90%",
    ),
    "VisionOpsRetrainAlert": (
        [{"series": f"visionops_retrain_alert{{{NS}, {POD}}}", "values": "1x20"}],
        [{"series": f"visionops_retrain_alert{{{NS}, {POD}}}", "values": "1x3 0x20"}],
        "10m",
        {"namespace": "visionops", "severity": "info"},
        "",
    ),
    # 10% of requests 5xx fires; 2% does not
    "VisionOpsHighErrorRate": (
        [
            {
                "series": f'visionops_requests_total{{{NS}, endpoint="classify", status="200"}}',
                "values": "0+90x40",
            },
            {
                "series": f'visionops_requests_total{{{NS}, endpoint="classify", status="503"}}',
                "values": "0+10x40",
            },
        ],
        [
            {
                "series": f'visionops_requests_total{{{NS}, endpoint="classify", status="200"}}',
                "values": "0+98x40",
            },
            {
                "series": f'visionops_requests_total{{{NS}, endpoint="classify", status="503"}}',
                "values": "0+2x40",
            },
        ],
        "20m",
        {"namespace": "visionops", "severity": "critical"},
        "10%",
    ),
    # every request between 0.5 s and 5 s (p95 4.775 s) fires; every request under 0.5 s does not
    "VisionOpsHighLatencyP95": (
        [
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="0.5"}}', "values": "0x40"},
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="5"}}', "values": "0+10x40"},
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="+Inf"}}', "values": "0+10x40"},
        ],
        [
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="0.5"}}', "values": "0+10x40"},
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="5"}}', "values": "0+10x40"},
            {"series": f'visionops_request_latency_seconds_bucket{{{NS}, le="+Inf"}}', "values": "0+10x40"},
        ],
        "20m",
        {"namespace": "visionops", "severity": "warning"},
        "4.775s",
    ),
    "VisionOpsMonitorDown": (
        [{"series": f'up{{{NS}, {POD}, job="visionops-drift-monitor"}}', "values": "0x30"}],
        [{"series": f'up{{{NS}, {POD}, job="visionops-drift-monitor"}}', "values": "1x30"}],
        "20m",
        {"namespace": "visionops", "pod": "p1", "job": "visionops-drift-monitor", "severity": "warning"},
        "",
    ),
    # the sidecar drops rows (it cannot keep up) fires; a flat counter does not
    "VisionOpsMonitorDroppingRows": (
        [{"series": f"visionops_monitor_rows_dropped_total{{{NS}, {POD}}}", "values": "0+5x40"}],
        [{"series": f"visionops_monitor_rows_dropped_total{{{NS}, {POD}}}", "values": "7x40"}],
        "30m",
        {"namespace": "visionops", "severity": "warning"},
        "",
    ),
    "VisionOpsMonitorRejectingRows": (
        [
            {"series": f"visionops_monitor_rows_received_total{{{NS}, {POD}}}", "values": "0+100x40"},
            {"series": f"visionops_monitor_rows_rejected_total{{{NS}, {POD}}}", "values": "0+20x40"},
        ],
        [
            {"series": f"visionops_monitor_rows_received_total{{{NS}, {POD}}}", "values": "0+100x40"},
            {"series": f"visionops_monitor_rows_rejected_total{{{NS}, {POD}}}", "values": "0+1x40"},
        ],
        "30m",
        {"namespace": "visionops", "severity": "warning"},
        "20%",
    ),
    # rows arrive but the last drift computation is from t=0 fires after an hour (+15 min); fresh runs do not
    "VisionOpsDriftStale": (
        [
            {"series": f"visionops_drift_last_run_timestamp_seconds{{{NS}, {POD}}}", "values": "0x120"},
            {"series": f"visionops_monitor_rows_received_total{{{NS}, {POD}}}", "values": "0+10x120"},
        ],
        [
            {"series": f"visionops_drift_last_run_timestamp_seconds{{{NS}, {POD}}}", "values": "0+60x120"},
            {"series": f"visionops_monitor_rows_received_total{{{NS}, {POD}}}", "values": "0+10x120"},
        ],
        "100m",
        {"namespace": "visionops", "pod": "p1", "severity": "warning"},
        "",
    ),
}


def promtool_tests(rules_file: Path) -> dict:
    rules = alert_rules()
    tests = []
    for alert, (firing, quiet, at, labels, value) in CASES.items():
        annotations = {k: expand(v, labels, value) for k, v in rules[alert].get("annotations", {}).items()}
        expected = {"exp_labels": {"alertname": alert, **labels}, "exp_annotations": annotations}
        tests.append(
            {
                "name": f"{alert} fires",
                "interval": "1m",
                "input_series": firing,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": [expected]}],
            }
        )
        tests.append(
            {
                "name": f"{alert} stays quiet",
                "interval": "1m",
                "input_series": quiet,
                "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": []}],
            }
        )
    return {"rule_files": [str(rules_file)], "evaluation_interval": "1m", "tests": tests}


def test_every_alert_has_a_firing_and_a_quiet_promtool_case():
    assert set(CASES) == set(alert_rules()), "each alert of the PrometheusRule needs a case here"


def test_promtool_unit_tests_every_alert(tmp_path):
    promtool = require_binary("promtool")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(manifest_rules(), sort_keys=False))
    check = subprocess.run([promtool, "check", "rules", str(rules_file)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(promtool_tests(rules_file), sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


def test_promtool_catches_a_broken_case(tmp_path):
    """The harness can fail: a firing case evaluated before its `for:` has elapsed is reported."""
    promtool = require_binary("promtool")
    rules_file = tmp_path / "rules.yaml"
    rules_file.write_text(yaml.safe_dump(manifest_rules(), sort_keys=False))
    tests = promtool_tests(rules_file)
    tests["tests"] = [t for t in tests["tests"] if t["name"] == "VisionOpsDriftPersisting fires"]
    tests["tests"][0]["alert_rule_test"][0]["eval_time"] = "10m"  # for: 30m not reached yet
    test_file = tmp_path / "tests.yaml"
    test_file.write_text(yaml.safe_dump(tests, sort_keys=False))
    out = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True)
    assert out.returncode != 0


# -- a real Prometheus scraping a real serving process and a real sidecar ------------------------------------
def _cli(*args: str) -> list[str]:
    from visionops.pipeline.local_runs import CLI

    return [*CLI, *args]


class _Procs:
    """Child processes in their own process groups, stopped (with their children) at the end."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path, self.procs = tmp_path, []

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen:
        log = (self.tmp_path / f"{name}.log").open("wb")
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, **(env or {})},
        )
        proc.log_path = self.tmp_path / f"{name}.log"  # type: ignore[attr-defined]
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


def _wait_ok(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> None:
    import httpx

    def ok() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args[3:6]} exited: {proc.log_path.read_text()[-3000:]}")  # type: ignore[attr-defined]
        with contextlib.suppress(httpx.HTTPError):
            return httpx.get(url, timeout=2).status_code == 200
        return False

    wait_until(ok, timeout, interval=0.5)


@pytest.fixture(scope="module")
def image_bundle(tmp_path_factory) -> tuple[str, Path, Path]:
    """A tiny bundle with a real drift reference of synthetic images; normal and shifted (dark) traffic."""
    from PIL import Image
    from visionops.data.synth import generate
    from visionops.drift.reference import attach_reference

    from tests.test_drift_support import image_dataset, tiny_bundle

    root = tmp_path_factory.mktemp("obs")
    ref = Path(generate(str(root / "ref"), count=80, size=32, seed=1))
    normal = Path(generate(str(root / "normal"), count=60, size=32, seed=2))
    shifted = Path(generate(str(root / "shifted"), count=60, size=32, seed=3, shift="dark"))
    for path in shifted.glob("*/*.png"):
        Image.open(path).convert("L").convert("RGB").save(path)
    bundle = tiny_bundle(str(root / "bundle"))
    attach_reference(bundle, image_dataset(ref, str(root / "ref-dataset")), split="val")
    return bundle, normal, shifted


def _post_images(url: str, images: list[Path]) -> list[int]:
    import httpx

    codes = []
    with httpx.Client(timeout=60) as client:
        for path in images:
            r = client.post(f"{url}/classify", files={"image": (path.name, path.read_bytes(), "image/png")})
            codes.append(r.status_code)
    return codes


def _panel_queries() -> list[tuple[str, str]]:
    dashboard = json.loads(DASHBOARD.read_text())
    panels = list(dashboard["panels"])
    for panel in dashboard["panels"]:
        panels += panel.get("panels", [])  # rows may hold panels
    return [(p.get("title", "?"), t["expr"]) for p in panels for t in p.get("targets", []) if t.get("expr")]


def _grafana_to_promql(expr: str) -> str:
    return expr.replace("$__rate_interval", "1m").replace("$namespace", "visionops")


_COMPARISON = re.compile(r"\s*(==|!=|>=|<=|>|<)\s*[0-9.]+(?=\s*(\)|$|\n|or\b|and\b|unless\b))")


def _without_thresholds(expr: str) -> str:
    """An alert expression with its threshold comparisons removed: the series the alert looks at."""
    return _COMPARISON.sub("", expr)


def test_without_thresholds():
    assert _without_thresholds("max by (x) (m) == 1") == "max by (x) (m)"
    assert (
        _without_thresholds('up{job="a"} == 0 or absent(up{job="a"})') == 'up{job="a"} or absent(up{job="a"})'
    )
    assert _without_thresholds("(a > 0) > 0.05") == "(a)"


def test_prometheus_scrapes_serving_and_sidecar_and_every_rule_and_panel_has_data(image_bundle, tmp_path):
    require_binary("prometheus")
    import httpx
    from visionops.demo.observability import Prometheus

    bundle, normal, shifted = image_bundle
    procs = _Procs(tmp_path)
    monitor_port, serving_port = free_port(), free_port()
    monitor_url, serving_url = f"http://127.0.0.1:{monitor_port}", f"http://127.0.0.1:{serving_port}"
    try:
        monitor = procs.start(
            "monitor",
            _cli("monitor", "--model", bundle, "--host", "127.0.0.1", "--port", str(monitor_port),
                 "--window-size", "50", "--drift-every-rows", "50", "--drift-every-seconds", "1",
                 "--trigger-windows", "1", "--dry-run"),
            env={"VISIONOPS_INSECURE_CONTROL": "true"},  # feedback below names an unsigned request id
        )  # fmt: skip
        serving = procs.start(
            "serving",
            _cli("serve", "--model", bundle, "--port", str(serving_port), "--monitor-url", monitor_url),
        )
        _wait_ok(f"{monitor_url}/readyz", monitor)
        _wait_ok(f"{serving_url}/readyz", serving)
        with Prometheus(
            {
                "visionops-serving": f"127.0.0.1:{serving_port}",
                "visionops-drift-monitor": f"127.0.0.1:{monitor_port}",
            },
            rules=manifest_rules(),
            labels={"namespace": "visionops", "pod": "p1"},
        ) as prom:
            wait_until(prom.targets_up, 60, interval=0.5)
            codes = _post_images(serving_url, sorted(normal.glob("*/*.png")))
            assert codes.count(200) == len(codes)
            bad = httpx.post(
                f"{serving_url}/classify", files={"image": ("x.png", b"not an image", "image/png")}
            )
            assert 400 <= bad.status_code < 500  # refused, not a server error
            httpx.post(f"{monitor_url}/ingest", json={"rows": [{"brightness": "dark"}]})  # one rejected row
            assert _post_images(serving_url, sorted(shifted.glob("*/*.png"))).count(200) == 60
            wait_until(lambda: httpx.get(f"{monitor_url}/drift").json().get("status") == "drift", 60)
            rid = httpx.post(
                f"{serving_url}/classify",
                files={"image": ("a.png", next(normal.glob("glasses/*.png")).read_bytes(), "image/png")},
            ).headers["X-Request-ID"]
            httpx.post(f"{monitor_url}/feedback", json={"request_id": rid, "label": "glasses"})

            queries = [
                (f"rule {name}", _without_thresholds(rule["expr"])) for name, rule in alert_rules().items()
            ]
            queries += [(f"rule {name} (as written)", rule["expr"]) for name, rule in alert_rules().items()]
            queries += [(f"panel {title}", _grafana_to_promql(expr)) for title, expr in _panel_queries()]
            assert len(queries) > 2 * len(CASES)

            def failures() -> list[str]:
                bad = []
                for name, expr in queries:
                    try:
                        result = prom.query(expr)
                    except Exception as exc:  # a PromQL error is a failure, reported with the query
                        bad.append(f"{name}: error {exc}")
                        continue
                    if not result and "(as written)" not in name:
                        bad.append(f"{name}: no series for {expr!r}")
                return bad

            with contextlib.suppress(TimeoutError):
                wait_until(lambda: not failures(), 90, interval=2)
            missing = failures()
            assert not missing, "\n".join(missing)
    finally:
        procs.stop()


# -- a real Alertmanager -> the sidecar's /alerts -> exactly one KFP run per episode ---------------------------
def _post_alert(am_url: str, name: str, *, resolved: bool = False, starts: float | None = None) -> None:
    from datetime import UTC, datetime, timedelta

    import httpx

    now = datetime.now(UTC)
    alert = {
        "labels": {"alertname": name, "namespace": "visionops", "model_version": "v7", "severity": "warning"},
        "annotations": {"summary": f"{name} (test)"},
        "startsAt": (now - timedelta(seconds=starts or 1)).isoformat(),
        "endsAt": (now - timedelta(seconds=0.5) if resolved else now + timedelta(hours=1)).isoformat(),
    }
    r = httpx.post(f"{am_url}/api/v2/alerts", json=[alert], timeout=10)
    assert r.status_code == 200, r.text


def _counter(monitor_url: str, name: str) -> float:
    import httpx

    text = httpx.get(f"{monitor_url}/metrics", timeout=5).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


def test_alertmanager_routes_the_drift_alert_to_one_kfp_run_per_episode(tmp_path):
    require_binary("prometheus-alertmanager")
    import httpx
    from visionops.demo.loop import DRIFT_ALERT, RETRAIN_ALERTS
    from visionops.demo.observability import Alertmanager

    bundle = feature_bundle(tmp_path / "b")
    kfp = KfpStandIn()
    procs = _Procs(tmp_path)
    port = free_port()
    monitor_url = f"http://127.0.0.1:{port}"
    cooldown = 12.0
    token = tmp_path / "alert-token"  # the Secret's file: the sidecar reads it, Alertmanager sends it
    token.write_text("alertmanager-to-sidecar-token-0123456789\n")
    try:
        monitor = procs.start(
            "monitor",
            _cli("monitor", "--model", bundle, "--host", "127.0.0.1", "--port", str(port),
                 "--drift-every-seconds", "3600", "--kfp-host", kfp.url, "--cooldown", str(cooldown),
                 "--kfp-params", json.dumps({"data_uri": "s3://data/v2"})),
            env={"VISIONOPS_ALERT_TOKEN_FILE": str(token)},
        )  # fmt: skip
        _wait_ok(f"{monitor_url}/readyz", monitor)
        anonymous = httpx.post(f"{monitor_url}/alerts", json={"alerts": []}, timeout=10)
        assert anonymous.status_code == 401 and "alert token" in anonymous.json()["detail"]
        with Alertmanager(f"{monitor_url}/alerts", alertnames=RETRAIN_ALERTS, credentials_file=token) as am:
            # an alert that is not routed to retraining reaches nobody
            _post_alert(am.url, "VisionOpsHighLatencyP95")
            # episode 1: the drift alert fires -> exactly one run
            _post_alert(am.url, DRIFT_ALERT)
            wait_until(lambda: len(kfp.run_requests()) >= 1, 30, interval=0.2)
            first = time.monotonic()  # the run was created before this
            time.sleep(3)  # repeats and re-sends inside this group change nothing
            assert len(kfp.run_requests()) == 1
            body = kfp.run_requests()[0][2]
            assert "alert-VisionOpsDriftPersisting" in body["display_name"]
            assert body["runtime_config"]["parameters"] == {
                "champion_uri": bundle,
                "warm_start": True,
                "data_uri": "s3://data/v2",
            }
            # resolved: the episode ends, no run
            _post_alert(am.url, DRIFT_ALERT, resolved=True)
            wait_until(lambda: _counter(monitor_url, "visionops_retrain_alert ") == 0, 30, interval=0.2)
            assert len(kfp.run_requests()) == 1
            # episode 2 inside the cooldown: counted as "cooldown", no run
            _post_alert(am.url, DRIFT_ALERT)
            wait_until(
                lambda: _counter(monitor_url, 'visionops_retrain_triggered_total{outcome="cooldown"}') == 1,
                30,
            )
            assert len(kfp.run_requests()) == 1
            # episode 3 after the cooldown: one more run
            _post_alert(am.url, DRIFT_ALERT, resolved=True)
            wait_until(lambda: _counter(monitor_url, "visionops_retrain_alert ") == 0, 30, interval=0.2)
            time.sleep(max(0.0, cooldown - (time.monotonic() - first)) + 2)
            _post_alert(am.url, DRIFT_ALERT)
            wait_until(lambda: len(kfp.run_requests()) >= 2, 30, interval=0.2)
            time.sleep(2)
        assert len(kfp.run_requests()) == 2, (tmp_path / "monitor.log").read_text()[-3000:]
        assert _counter(monitor_url, 'visionops_retrain_triggered_total{outcome="created"}') == 2
        assert [p for m, p, _ in kfp.requests if m == "POST"].count("/apis/v2beta1/runs") == 2
    finally:
        procs.stop()
        kfp.close()
