"""Helpers shared by the drift tests (no tests here): tiny bundles, synthetic datasets, a running sidecar and a
stand-in KFP API server that records every request."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlparse

CLASSES = ["glasses", "no_glasses"]


def tiny_bundle(uri: str, *, seed: int = 0) -> str:
    """An untrained tiny_cnn bundle (64 px)."""
    import torch
    from visionops.bundle import save_bundle
    from visionops.models import create_model, get_entry

    torch.manual_seed(seed)
    model = create_model("tiny_cnn", 2)
    meta = {"architecture": "tiny_cnn", "classes": CLASSES, "preprocess": get_entry("tiny_cnn").preprocess}
    return save_bundle(model, meta, uri)


def image_dataset(folder: Path, uri: str, *, split: str = "val") -> str:
    """A dataset (manifest) over every image under ``folder/<label>/``, all in one split."""
    import pandas as pd
    from PIL import Image

    rows = []
    for path in sorted(folder.glob("*/*")):
        if path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        data = path.read_bytes()
        with Image.open(path) as img:
            width, height = img.size
        rows.append(
            {
                "path": str(path),
                "label": path.parent.name,
                "sha256": hashlib.sha256(data).hexdigest(),
                "width": width,
                "height": height,
                "split": split,
                "group": "",
            }
        )
    from visionops.data.manifest import write_dataset

    write_dataset(pd.DataFrame(rows), {"source": "test"}, uri)
    return uri


def load_images(folder: Path) -> list:
    from PIL import Image

    return [Image.open(p).convert("RGB") for p in sorted(folder.glob("*/*.png"))]


def numeric_reference(n: int = 1000, *, seed: int = 0):
    """A reference frame of feature rows drawn from fixed distributions (no images, no model)."""
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    return pd.DataFrame(draw_rows(rng, n))


def draw_rows(rng, n: int, *, brightness: float = 0.5, glasses_share: float = 0.5) -> list[dict]:
    """Feature rows like a reference (or shifted: darker, another class prior)."""
    import numpy as np

    glasses = rng.random(n) < glasses_share
    pos = np.clip(np.where(glasses, rng.normal(0.8, 0.1, n), rng.normal(0.2, 0.1, n)), 0, 1)
    rows = []
    bright = np.clip(rng.normal(brightness, 0.1, n), 0, 1)
    for i in range(n):
        label = "glasses" if pos[i] >= 0.5 else "no_glasses"
        rows.append(
            {
                "brightness": float(bright[i]),
                "contrast": float(np.clip(rng.normal(0.2, 0.05), 0, 1)),
                "saturation": float(np.clip(rng.normal(0.3, 0.08), 0, 1)),
                "sharpness": float(abs(rng.normal(3, 1))),
                "mean_r": float(np.clip(bright[i] + rng.normal(0.03, 0.02), 0, 1)),
                "mean_g": float(np.clip(bright[i] + rng.normal(0, 0.02), 0, 1)),
                "mean_b": float(np.clip(bright[i] - rng.normal(0.03, 0.02), 0, 1)),
                "width": 96.0,
                "height": 96.0,
                "aspect": 1.0,
                "is_greyscale": 0.0,
                "confidence": float(max(pos[i], 1 - pos[i])),
                "predicted_class": label,
                "positive_prob": float(pos[i]),
                "emb_0": float(rng.normal()),
                "emb_1": float(rng.normal()),
            }
        )
    return rows


def feature_bundle(root: Path, *, reference_rows: int = 1000, seed: int = 0) -> str:
    """A tiny bundle whose drift slot holds a numeric reference (for sidecar tests that need no images)."""
    from visionops.bundle import update_meta

    uri = tiny_bundle(str(root / "bundle"), seed=seed)
    ref = numeric_reference(reference_rows, seed=seed)
    (root / "bundle" / "drift").mkdir(exist_ok=True)
    ref.to_parquet(root / "bundle" / "drift" / "reference.parquet", index=False)
    update_meta(
        uri, drift={"reference": "drift/reference.parquet", "rows": len(ref), "columns": list(ref.columns)}
    )
    return uri


def wait_until(predicate, timeout: float = 60.0, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise TimeoutError(f"condition not met within {timeout}s")


def start_monitor(bundle_uri: str, *, auth=None, headers=None, **settings):
    """A running sidecar (in this process, on a free port) and an httpx client for it.

    ``auth`` (a :class:`visionops.auth.ControlAuth`) defaults to the local opt-out (no secrets, control open),
    which the tests of drift and quality use; the tests of authentication pass their own secrets and
    ``headers`` for the client.
    """
    import httpx
    from visionops.auth import AuthSettings, ControlAuth
    from visionops.drift.monitor import Monitor
    from visionops.drift.service import MonitorServer
    from visionops.drift.settings import MonitorSettings

    settings.setdefault("drift_every_seconds", 3600.0)
    config = MonitorSettings(model_uri=bundle_uri, host="127.0.0.1", port=0, **settings)
    if auth is None:
        auth = ControlAuth(AuthSettings(insecure_control=True))
    server = MonitorServer(Monitor(config), auth=auth).start()
    client = httpx.Client(base_url=server.url, timeout=60, headers=headers)
    wait_until(lambda: client.get("/readyz").status_code == 200)
    return server, client


def next_result(server, client, after: float, timeout: float = 60.0) -> dict:
    """The first drift result computed after ``after`` (a time.time() value)."""

    def newer():
        data = client.get("/drift").json()
        return data if data.get("timestamp", 0) > after else None

    return wait_until(newer, timeout)


class KfpStandIn:
    """A stand-in for the KFP v2beta1 REST API: records (method, path, JSON body) and answers like KFP."""

    PIPELINE_ID = "p-123"
    VERSION_ID = "v-456"
    EXPERIMENT_ID = "e-789"

    def __init__(self, *, experiment_exists: bool = True) -> None:
        self.requests: list[tuple[str, str, dict | None]] = []
        self.auth: list[str | None] = []
        self.experiment_exists = experiment_exists
        self.runs = 0
        #: the runs the server holds (run id -> run), listed and deleted like KFP does
        self.stored: dict[str, dict] = {}
        self.lock = threading.Lock()
        stand_in = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _reply(self, data):
                body = json.dumps(data).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                stand_in.requests.append(("GET", self.path, None))
                stand_in.auth.append(self.headers.get("Authorization"))
                path = self.path.split("?")[0]
                if path == "/apis/v2beta1/healthz":
                    self._reply({"multi_user": False})
                elif path == "/apis/v2beta1/pipelines":
                    self._reply(
                        {
                            "pipelines": [{"pipeline_id": stand_in.PIPELINE_ID, "display_name": "x"}],
                            "total_size": 1,
                        }
                    )
                elif path == f"/apis/v2beta1/pipelines/{stand_in.PIPELINE_ID}/versions":
                    self._reply(
                        {
                            "pipeline_versions": [
                                {
                                    "pipeline_version_id": stand_in.VERSION_ID,
                                    "pipeline_id": stand_in.PIPELINE_ID,
                                }
                            ],
                            "total_size": 1,
                        }
                    )
                elif path == "/apis/v2beta1/experiments":
                    exps = [{"experiment_id": stand_in.EXPERIMENT_ID, "display_name": "x"}]
                    self._reply({"experiments": exps, "total_size": 1} if stand_in.experiment_exists else {})
                elif path == "/apis/v2beta1/runs":
                    self._reply(stand_in.list_runs(parse_qs(urlparse(self.path).query)))
                else:
                    self._reply({})

            def do_DELETE(self):
                stand_in.requests.append(("DELETE", self.path, None))
                stand_in.auth.append(self.headers.get("Authorization"))
                with stand_in.lock:
                    stand_in.stored.pop(self.path.split("?")[0].rsplit("/", 1)[-1], None)
                self._reply({})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length) or b"null")
                stand_in.requests.append(("POST", self.path, body))
                stand_in.auth.append(self.headers.get("Authorization"))
                if self.path == "/apis/v2beta1/experiments":
                    stand_in.experiment_exists = True
                    self._reply(
                        {"experiment_id": stand_in.EXPERIMENT_ID, "display_name": body["display_name"]}
                    )
                elif self.path == "/apis/v2beta1/runs":
                    with stand_in.lock:
                        stand_in.runs += 1
                        run = {
                            "run_id": f"run-{stand_in.runs}",
                            "display_name": body.get("display_name"),
                            "experiment_id": body.get("experiment_id"),
                            "created_at": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
                        }
                        stand_in.stored[run["run_id"]] = run
                    self._reply(run)
                else:
                    self._reply({})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def list_runs(self, query: dict[str, list[str]]) -> dict:
        """GET /runs: the experiment's runs, ``IS_SUBSTRING`` on display_name, newest first (as KFP sorts)."""
        with self.lock:
            runs = [r for r in self.stored.values() if r["experiment_id"] in query.get("experiment_id", [])]
        for predicate in json.loads(query.get("filter", ["{}"])[0]).get("predicates", []):
            assert predicate["operation"] in ("IS_SUBSTRING", 7) and predicate["key"] == "display_name"
            runs = [r for r in runs if predicate["stringValue"] in (r["display_name"] or "")]
        runs.sort(key=lambda r: r["created_at"], reverse=query.get("sort_by") == ["created_at desc"])
        return {"runs": runs, "total_size": len(runs)} if runs else {}

    def run_requests(self) -> list[tuple[str, str, dict | None]]:
        return [r for r in self.requests if r[0] == "POST" and r[1] == "/apis/v2beta1/runs"]

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
