"""Memory under hostile input, measured on a real ``visionops serve`` process (psutil, children included).

One ``/classify_batch`` of 64 pixel bombs (JPEGs whose header says 6000x6000, ~550 KB of flat data each) used to
take serving to about 7 GB of retained RSS (issue 17); with the pixel budget and JPEG draft decoding the peak
stays under :data:`BOMB_BATCH_RSS_BUDGET_MB` above the idle server. The figure is printed for docs/serving.md.
"""

from __future__ import annotations

import contextlib
import io
import threading
import time

import pytest
from PIL import Image

from tests.test_serving import run_server

BOMB_SIDE = 6000
BOMBS = 64
#: Growth of serving's RSS (all its processes) allowed while it answers one batch of 64 bombs. Decoded in
#: draft mode each is 750x750 RGB (1.7 MB), 108 MB for the batch, plus tensors and the allocator's slack.
BOMB_BATCH_RSS_BUDGET_MB = 400


def pixel_bomb() -> bytes:
    """A real JPEG that claims 6000x6000 (36 megapixels) in very little data (one flat colour)."""
    buf = io.BytesIO()
    Image.new("RGB", (BOMB_SIDE, BOMB_SIDE), (120, 130, 140)).save(buf, "JPEG", quality=5)
    return buf.getvalue()


def tree_rss(pid: int) -> int:
    """RSS in bytes of a process and all its descendants (the BentoML arbiter, workers, the monitor child)."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.NoSuchProcess):  # a process that just exited holds nothing
            total += proc.memory_info().rss
    return total


@pytest.fixture(scope="module")
def bomb_server(tmp_path_factory):
    """``visionops serve`` of a tiny bundle, with the monitor and the prediction log on (run_server's)."""
    from tests.test_drift_support import tiny_bundle

    tmp = tmp_path_factory.mktemp("bombs")
    yield from run_server(
        tiny_bundle(str(tmp / "bundle")),
        tmp,
        VISIONOPS_INSECURE_CONTROL="true",
        VISIONOPS_MAX_IMAGE_BYTES="1000000",
        VISIONOPS_MAX_IMAGE_PIXELS="40000000",  # the header check lets them through: draft decoding must hold
    )


@pytest.mark.integration
def test_batch_of_64_pixel_bombs_keeps_serving_rss_under_budget(bomb_server):
    srv = bomb_server
    data = pixel_bomb()
    assert len(data) < 1_000_000
    for _ in range(2):  # warm up the batch path with small images, so the baseline includes its first costs
        small = io.BytesIO()
        Image.new("RGB", (80, 72), (10, 20, 30)).save(small, "JPEG")
        files = [("images", (f"s{i}.jpg", small.getvalue(), "image/jpeg")) for i in range(8)]
        assert srv.client.post("/classify_batch", files=files).status_code == 200
    time.sleep(1.0)
    baseline = tree_rss(srv.proc.pid)
    peak, done = [baseline], threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(srv.proc.pid))
            time.sleep(0.01)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        files = [("images", (f"bomb{i}.jpg", data, "image/jpeg")) for i in range(BOMBS)]
        response = srv.client.post("/classify_batch", files=files, timeout=120)
    finally:
        done.set()
        sampler.join()
    after = tree_rss(srv.proc.pid)
    growth_mb = (peak[0] - baseline) / 2**20
    print(
        f"\n{BOMBS} bombs ({BOMB_SIDE}x{BOMB_SIDE}, {len(data) / 1024:.0f} KB each): serving RSS "
        f"{baseline / 2**20:.0f} MB idle, peak {peak[0] / 2**20:.0f} MB (+{growth_mb:.0f} MB, budget "
        f"{BOMB_BATCH_RSS_BUDGET_MB} MB), {after / 2**20:.0f} MB after"
    )
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["predictions"]) == BOMBS
    assert growth_mb < BOMB_BATCH_RSS_BUDGET_MB


@pytest.mark.integration
def test_bench_hostile_short_run_keeps_rss_growth_under_target():
    # the benchmark itself, 10 s instead of 60: 8 connections of 2000x2000 photos with the monitor on
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    faces = Path(os.environ.get("VISIONOPS_FACES_DIR", root.parent / "shared" / "data" / "faces-glasses"))
    if not any(faces.glob("*/*.jpg")):
        pytest.skip(f"no photos under {faces} (set VISIONOPS_FACES_DIR)")
    done = subprocess.run(
        [sys.executable, str(root / "benchmarks" / "bench_hostile.py"), "--seconds", "10", "--photos", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    print(done.stdout)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "verdict: PASS" in done.stdout and "p99" in done.stdout and "load average" in done.stdout
