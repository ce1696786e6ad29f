"""Hostile-load benchmark: serving's RSS and p99 latency under 8 connections of 2000x2000 photos, monitor on.

    .venv/bin/python benchmarks/bench_hostile.py                 # 60 s (the issue's figure)
    .venv/bin/python benchmarks/bench_hostile.py --seconds 10    # the short version the test suite runs

Before issue 17 the monitor queue held each request's decoded image and was bounded by count, so serving's RSS
rose 2.8 GB in 25 s under this load. Now monitor events carry a thumbnail's statistics and the queue is bounded
in bytes. The benchmark starts ``visionops serve`` (tiny_cnn, random weights: speed and memory do not depend on
what it learned) with a real HTTP receiver as the drift sidecar and the prediction log on, sends real face
photos from ../shared/data/faces-glasses upscaled to 2000x2000 JPEGs from 8 closed-loop connections, samples
the RSS of serving and all its child processes (psutil) and prints RSS before, peak and after, the growth
against ``--target-mb`` (200), p50/p99 latency and the machine's load average beside them. Exit status 1 when
the growth is over the target.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import FACES, RECEIVER, ServerProcess, free_port, make_bundle

SIDE = 2000


def big_photos(n: int) -> list[bytes]:
    """``n`` real face photos upscaled to SIDE x SIDE JPEGs (quality 85): what a careless camera sends."""
    from PIL import Image

    files = sorted(FACES.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"no photos under {FACES} (set VISIONOPS_FACES_DIR)")
    random.Random(0).shuffle(files)
    out = []
    for path in files[:n]:
        with Image.open(path) as img:
            buf = io.BytesIO()
            img.convert("RGB").resize((SIDE, SIDE), Image.Resampling.BICUBIC).save(buf, "JPEG", quality=85)
            out.append(buf.getvalue())
    return out


def tree_rss(pid: int) -> int:
    """RSS in bytes of ``pid`` and all its descendants."""
    import psutil

    root = psutil.Process(pid)
    total = 0
    for proc in [root, *root.children(recursive=True)]:
        try:
            total += proc.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


async def load(url: str, images: list[bytes], connections: int, seconds: float) -> tuple[list[float], dict]:
    """Closed loop from ``connections`` clients for ``seconds``: latencies (s) of 200s and status counts."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        i = worker
        while time.perf_counter() < stop_at:
            started = time.perf_counter()
            try:
                r = await http.post(
                    "/classify", files={"image": ("x.jpg", images[i % len(images)], "image/jpeg")}
                )
                statuses[r.status_code] = statuses.get(r.status_code, 0) + 1
                if r.status_code == 200:
                    latencies.append(time.perf_counter() - started)
            except httpx.HTTPError:
                statuses[0] = statuses.get(0, 0) + 1
            i += connections

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        await asyncio.gather(*(client(w, http) for w in range(connections)))
    return latencies, statuses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long the load runs")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--photos", type=int, default=24, help="distinct 2000x2000 photos sent in turn")
    parser.add_argument("--target-mb", type=float, default=200.0, help="allowed RSS growth")
    args = parser.parse_args(argv)

    images = big_photos(args.photos)
    with tempfile.TemporaryDirectory(prefix="bench-hostile-") as tmp:
        root = Path(tmp)
        port = free_port()
        receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(port)])
        env = {
            "VISIONOPS_MONITOR_URL": f"http://127.0.0.1:{port}",
            "VISIONOPS_PREDICTION_LOG": str(root / "predlog"),
            "VISIONOPS_INSECURE_CONTROL": "true",
            "VISIONOPS_MAX_LATENCY_MS": "5000",
        }
        server = ServerProcess(make_bundle("tiny_cnn", root), env, root / "server.log")
        try:
            asyncio.run(load(server.url, images, 2, 3.0))  # warm up: first-call costs are not growth
            time.sleep(1.0)
            before = tree_rss(server.proc.pid)
            peak, done = [before], threading.Event()

            def sample() -> None:
                while not done.is_set():
                    peak[0] = max(peak[0], tree_rss(server.proc.pid))
                    time.sleep(0.05)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            latencies, statuses = asyncio.run(load(server.url, images, args.connections, args.seconds))
            done.set()
            sampler.join()
            after = tree_rss(server.proc.pid)
        finally:
            server.stop()
            receiver.terminate()
            receiver.wait()
    mb = 2**20
    growth = (peak[0] - before) / mb
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    load1, load5, _ = os.getloadavg()
    print(
        f"{args.connections} connections x {args.seconds:.0f} s of {SIDE}x{SIDE} photos, monitor + prediction log on"
    )
    print(f"  answers: {statuses} ({len(latencies) / args.seconds:.1f}/s answered 200)")
    print(f"  latency: p50 {q[49] * 1000:.0f} ms, p99 {q[98] * 1000:.0f} ms")
    print(
        f"  serving RSS (all processes): before {before / mb:.0f} MB, peak {peak[0] / mb:.0f} MB, "
        f"after {after / mb:.0f} MB; growth {growth:.0f} MB (target < {args.target_mb:.0f} MB)"
    )
    print(f"  machine load average: {load1:.2f} (1 min), {load5:.2f} (5 min) on {os.cpu_count()} CPUs")
    ok = growth < args.target_mb
    print("  verdict:", "PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
