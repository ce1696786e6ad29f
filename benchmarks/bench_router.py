"""Router overhead: p50/p99 latency of the same requests sent directly to a backend vs through
`visionops route`, one run, each in its own process on 127.0.0.1.

    .venv/bin/python benchmarks/bench_router.py [--requests 2000] [--policy weights|sticky|thompson]
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait(port: int, proc: subprocess.Popen) -> None:
    for _ in range(300):
        if proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(port)


def run_backend(port: int) -> None:
    """A minimal model-like backend: reads the body, answers a small JSON."""
    from aiohttp import web

    async def classify(request):
        await request.read()
        return web.json_response({"label": "glasses", "probability": 0.93})

    app = web.Application()
    app.router.add_post("/classify", classify)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


def measure(url: str, n: int, body: bytes) -> np.ndarray:
    import httpx

    times = []
    with httpx.Client() as client:
        for i in range(n + 100):
            t0 = time.perf_counter()
            r = client.post(url, content=body, headers={"X-Unit-ID": f"cam-{i % 50}"})
            dt = time.perf_counter() - t0
            r.raise_for_status()
            if i >= 100:  # warm-up excluded
                times.append(dt * 1000)
    return np.array(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--policy", default="weights")
    parser.add_argument("--backend", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.backend:
        run_backend(args.backend)
        return
    body = os.urandom(20_000)  # about a small JPEG
    bport, rport = free_port(), free_port()
    backend = subprocess.Popen([sys.executable, __file__, "--backend", str(bport)])
    router = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "visionops"),
            "route",
            "--variant",
            f"a=http://127.0.0.1:{bport}",
            "--policy",
            args.policy,
            "--host",
            "127.0.0.1",
            "--port",
            str(rport),
        ],
        stdout=subprocess.DEVNULL,
    )
    try:
        wait(bport, backend)
        wait(rport, router)
        direct = measure(f"http://127.0.0.1:{bport}/classify", args.requests, body)
        routed = measure(f"http://127.0.0.1:{rport}/classify", args.requests, body)
    finally:
        for p in (router, backend):
            p.terminate()
            p.wait(10)
    d50, d99 = np.percentile(direct, [50, 99])
    r50, r99 = np.percentile(routed, [50, 99])
    print(f"requests per path: {args.requests} (sequential, keep-alive, 20 kB body), policy={args.policy}")
    print(f"direct : p50 {d50:.3f} ms  p99 {d99:.3f} ms")
    print(f"router : p50 {r50:.3f} ms  p99 {r99:.3f} ms")
    print(
        f"overhead: p50 +{r50 - d50:.3f} ms (target <= 2 ms), p99 +{r99 - d99:.3f} ms; ratio p50 {r50 / d50:.2f}x"
    )


if __name__ == "__main__":
    main()
