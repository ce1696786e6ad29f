"""Memory stays bounded: the sidecar's RSS is flat over a long stream (200,000 rows)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.conftest import free_port, wait_for_port
from tests.test_drift_support import draw_rows, feature_bundle, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_rss_flat_over_200k_rows(tmp_path):
    psutil = pytest.importorskip("psutil")
    uri = feature_bundle(tmp_path)
    port = free_port()
    env = {**os.environ, "VISIONOPS_LOG_LEVEL": "WARNING", "VISIONOPS_INSECURE_CONTROL": "true"}  # local run
    exe = Path(sys.executable).parent / "visionops"
    proc = subprocess.Popen(
        [
            str(exe),
            "monitor",
            "--model",
            uri,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--window-size",
            "2000",
            "--dry-run",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, timeout=120, proc=proc)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=60)
        wait_until(lambda: client.get("/readyz").status_code == 200, timeout=120)
        rng = np.random.default_rng(0)
        # request ids are unique throughout: the pending-prediction store must stay bounded too
        batches = [draw_rows(rng, 1000) for _ in range(20)]
        info = psutil.Process(proc.pid)
        sent, samples = 0, []
        for i in range(200):
            batch = batches[i % len(batches)]
            for j, row in enumerate(batch):
                row["request_id"] = f"req-{i}-{j}"
            assert client.post("/ingest", json={"rows": batch}).status_code == 200
            sent += len(batch)
            if i % 20 == 19:
                samples.append(info.memory_info().rss)
        assert sent == 200_000
        metrics = client.get("/metrics").text
        assert "visionops_monitor_rows_received_total 200000.0" in metrics
        assert "visionops_drift_window_rows 2000.0" in metrics
        # after warm-up (first 40k rows: imports, first drift runs, buffers), RSS stays within 5%
        baseline = samples[1]
        growth = (max(samples[2:]) - baseline) / baseline
        assert growth < 0.05, [s // 2**20 for s in samples]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
