"""Serving benchmark: HTTP images/s at saturation vs in-process batched images/s, latency at half load, and
latency with prediction logging (monitor sidecar + prediction log) on vs off. One run, figures side by side.

    .venv/bin/python benchmarks/bench_serving.py            # mobilenet_v3_small, 15 s phases
    .venv/bin/python benchmarks/bench_serving.py --quick    # tiny_cnn, 5 s phases

Images: real photos from ../shared/data/faces-glasses when present (else generated ones). The model has
random weights (no downloads here): speed does not depend on what it learned. The load generator runs on the
same machine as the server, so on a small box it takes CPU from the server (the ratio is conservative).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
FACES = Path(os.environ.get("VISIONOPS_FACES_DIR", ROOT.parent / "shared" / "data" / "faces-glasses"))
VISIONOPS = str(Path(sys.executable).with_name("visionops"))
ROUNDS = 3  # alternating logging-off / logging-on phases

RECEIVER = """
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers["Content-Length"]))
        self.send_response(200); self.send_header("Content-Length", "2"); self.end_headers(); self.wfile.write(b"{}")
    def log_message(self, *a): pass
ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load_images(n: int) -> tuple[list[bytes], str]:
    """``n`` JPEG payloads: real face photos when available, else generated pictures."""
    files = sorted(FACES.glob("*/*.jpg"))
    if files:
        random.Random(0).shuffle(files)
        return [p.read_bytes() for p in files[:n]], f"real photos from {FACES}"
    from PIL import Image
    from visionops.images import encode_image

    rng = random.Random(0)
    images = [Image.new("RGB", (160, 160), tuple(rng.randrange(256) for _ in range(3))) for _ in range(n)]
    return [encode_image(img) for img in images], "generated 160x160 images"


def make_bundle(arch: str, root: Path) -> str:
    import torch
    from visionops.bundle import save_bundle
    from visionops.models import create_model, get_entry

    torch.manual_seed(0)
    meta = {
        "architecture": arch,
        "classes": ["glasses", "no_glasses"],
        "preprocess": get_entry(arch).preprocess,
    }
    return save_bundle(create_model(arch, 2), meta, str(root / "bundle"))


def in_process(bundle_uri: str, images: list[bytes], batch: int, seconds: float) -> tuple[float, float]:
    """(images/s bytes -> answers, images/s model only) with the library's Predictor in batches."""
    import torch
    from visionops.serving.predictor import Predictor

    predictor = Predictor.load(bundle_uri, device="cpu")
    predictor.predict(images[:batch])  # warm-up
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        chunk = [images[(done + i) % len(images)] for i in range(batch)]
        predictor.predict(chunk)
        done += batch
    full = done / (time.perf_counter() - started)
    tensor = torch.stack([predictor.to_tensor(predictor.decode(b)) for b in images[:batch]])
    done, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds / 2:
        predictor.infer(tensor)
        done += batch
    return full, done / (time.perf_counter() - started)


class ServerProcess:
    def __init__(self, bundle_uri: str, env: dict[str, str], log_path: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log_path.open("w")
        self.proc = subprocess.Popen(
            [VISIONOPS, "serve", "--model", bundle_uri, "--port", str(self.port)],
            env={**os.environ, "BENTOML_DO_NOT_TRACK": "true", **env},
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 300
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited; see {log_path}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"server not ready; see {log_path}")
            time.sleep(0.3)

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


async def saturate(
    url: str, images: list[bytes], concurrency: int, seconds: float, per_request: int = 1
) -> dict:
    """Closed loop: ``concurrency`` clients send back to back for ``seconds``; images/s and error count."""
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    counts = {"images": 0}
    errors: dict[int, int] = {}
    stop_at = time.perf_counter() + seconds
    route = "/classify" if per_request == 1 else "/classify_batch"
    field = "image" if per_request == 1 else "images"

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        i = worker
        while time.perf_counter() < stop_at:
            files = [
                (field, ("x.jpg", images[(i + k) % len(images)], "image/jpeg")) for k in range(per_request)
            ]
            i += concurrency * per_request
            response = await http.post(route, files=files)
            if response.status_code == 200:
                counts["images"] += per_request
            else:
                errors[response.status_code] = errors.get(response.status_code, 0) + 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        for _ in range(2):  # warm-up
            await http.post("/classify", files={"image": ("x.jpg", images[0], "image/jpeg")})
        started = time.perf_counter()
        await asyncio.gather(*(client(w, http) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    return {"images_per_s": counts["images"] / elapsed, "errors": errors or "none"}


async def open_loop(url: str, images: list[bytes], rate: float, seconds: float) -> tuple[list[float], int]:
    """Requests at a fixed ``rate`` (per second) regardless of answers: (latencies in ms, errors)."""
    latencies: list[float] = []
    errors = 0
    limits = httpx.Limits(max_connections=512, max_keepalive_connections=512)

    async def one(http: httpx.AsyncClient, data: bytes) -> None:
        nonlocal errors
        started = time.perf_counter()
        response = await http.post("/classify", files={"image": ("x.jpg", data, "image/jpeg")})
        if response.status_code == 200:
            latencies.append((time.perf_counter() - started) * 1000)
        else:
            errors += 1

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        tasks = []
        started = time.perf_counter()
        n = int(rate * seconds)
        for i in range(n):
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(http, images[i % len(images)])))
        await asyncio.gather(*tasks)
    return latencies, errors


def summarize(latencies: list[float], errors: int) -> dict:
    """p50/p95/p99/mean in ms."""
    q = statistics.quantiles(latencies, n=100) if len(latencies) >= 2 else [float("nan")] * 99
    return {
        "p50": q[49],
        "p95": q[94],
        "p99": q[98],
        "mean": statistics.fmean(latencies) if latencies else float("nan"),
        "n": len(latencies),
        "errors": errors,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny_cnn and 5 s phases")
    parser.add_argument(
        "--arch", default=None, help="architecture (default mobilenet_v3_small; quick: tiny_cnn)"
    )
    parser.add_argument("--seconds", type=float, default=None, help="length of each measured phase")
    parser.add_argument("--concurrency", type=int, default=32, help="closed-loop clients at saturation")
    parser.add_argument("--batch", type=int, default=32, help="in-process batch = VISIONOPS_MAX_BATCH_SIZE")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads, in-process and in the server (0 = torch default)",
    )
    args = parser.parse_args()
    arch = args.arch or ("tiny_cnn" if args.quick else "mobilenet_v3_small")
    seconds = args.seconds or (5.0 if args.quick else 15.0)

    images, source = load_images(200 if args.quick else 500)
    tmp = Path(tempfile.mkdtemp(prefix="bench-serving-"))
    bundle_uri = make_bundle(arch, tmp)
    print(
        f"model {arch}, {len(images)} {source}, {os.cpu_count()} CPU cores, phases of {seconds:.0f} s, "
        f"torch threads {args.threads or 'default'}, load average {os.getloadavg()[0]:.1f}"
    )

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    inproc_full, inproc_model = in_process(bundle_uri, images, args.batch, seconds)
    common = {
        "VISIONOPS_MAX_BATCH_SIZE": str(args.batch),
        "VISIONOPS_MAX_LATENCY_MS": "2000",
        "VISIONOPS_TORCH_THREADS": str(args.threads),
    }

    receiver_port = free_port()
    receiver = subprocess.Popen([sys.executable, "-c", RECEIVER, str(receiver_port)])
    env_on = {
        **common,
        "VISIONOPS_MONITOR_URL": f"http://127.0.0.1:{receiver_port}",
        "VISIONOPS_PREDICTION_LOG": str(tmp / "predlog"),
    }
    server = ServerProcess(bundle_uri, {**common, "VISIONOPS_MONITOR_URL": ""}, tmp / "server-off.log")
    server_on = ServerProcess(bundle_uri, env_on, tmp / "server-on.log")  # idle until its phases
    try:
        sat = asyncio.run(saturate(server.url, images, args.concurrency, seconds))
        sat_batch = asyncio.run(
            saturate(server.url, images, max(2, args.concurrency // 8), seconds, per_request=8)
        )
        half_rate = max(1.0, sat["images_per_s"] / 2)
        # Warm the second server the same way (its batching dispatcher calibrates on its first requests).
        asyncio.run(saturate(server_on.url, images, args.concurrency, min(5.0, seconds / 3)))
        # Alternate off/on phases so that a change in the machine's background load hits both alike.
        pooled: dict[str, tuple[list[float], int]] = {"off": ([], 0), "on": ([], 0)}
        for _ in range(ROUNDS):
            for name, srv in (("off", server), ("on", server_on)):
                lat, err = asyncio.run(open_loop(srv.url, images, half_rate, seconds / ROUNDS))
                pooled[name] = (pooled[name][0] + lat, pooled[name][1] + err)
        off, on = summarize(*pooled["off"]), summarize(*pooled["on"])
    finally:
        server.stop()
        server_on.stop()
        receiver.terminate()
        receiver.wait(timeout=10)
    logged = sum(1 for p in (tmp / "predlog").rglob("*.jsonl") for _ in p.open())

    print()
    print(f"{'':44s}{'images/s':>10s}")
    print(f"{'in-process, model only (batch ' + str(args.batch) + ')':44s}{inproc_model:10.1f}")
    print(f"{'in-process, bytes -> answers (batch ' + str(args.batch) + ')':44s}{inproc_full:10.1f}")
    print(
        f"{'HTTP /classify, ' + str(args.concurrency) + ' clients':44s}{sat['images_per_s']:10.1f}"
        f"   errors {sat['errors']}"
    )
    print(
        f"{'HTTP /classify_batch (8/request)':44s}{sat_batch['images_per_s']:10.1f}   errors {sat_batch['errors']}"
    )
    print(
        f"ratio HTTP /classify / in-process bytes->answers: {sat['images_per_s'] / inproc_full:.2f}  (target >= 0.7)"
    )
    print(f"ratio HTTP /classify_batch / in-process:          {sat_batch['images_per_s'] / inproc_full:.2f}")
    print()
    print(f"latency at half load ({half_rate:.1f} req/s, open loop, {ROUNDS} alternating rounds each), ms:")
    print(f"{'':24s}{'p50':>8s}{'p95':>8s}{'p99':>8s}{'mean':>8s}{'n':>7s}{'errors':>8s}")
    for name, r in (("logging off", off), ("logging on", on)):
        print(
            f"{name:24s}{r['p50']:8.1f}{r['p95']:8.1f}{r['p99']:8.1f}{r['mean']:8.1f}{r['n']:7d}{r['errors']:8d}"
        )
    print(
        f"ratio logging on / off: p50 {on['p50'] / off['p50']:.3f}, mean {on['mean'] / off['mean']:.3f}"
        f"  (target <= 1.05); {logged} events in the prediction log"
    )


if __name__ == "__main__":
    main()
