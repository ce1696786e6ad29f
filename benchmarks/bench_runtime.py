"""Runtime benchmark: eager PyTorch vs ONNX Runtime fp32 vs ONNX Runtime int8, in-process and served over HTTP,
on the same model and the same real photos, at batch 1 and at the best batch. One run, figures side by side.

    .venv/bin/python benchmarks/bench_runtime.py                          # mobilenet_v3_small and small_cnn
    .venv/bin/python benchmarks/bench_runtime.py --arch small_cnn --seconds 3 --rounds 2   # quicker

For each architecture: a bundle with random weights (speed does not depend on what was learned), exported the
way ``visionops package`` does it (parity on photos, int8 calibrated on other photos), then ROUNDS rounds in
which every runtime is measured in turn (so a change in the machine's background load hits all alike):

- in-process: ``Predictor.predict`` on JPEG bytes (decode + preprocess + model, what the server does per
  image) at batch 1 (p50/p99 per call) and at the best batch (the fastest of --batches for that runtime);
- served: ``visionops serve`` with ``VISIONOPS_RUNTIME`` set; batch 1 = one client sending /classify back to
  back; best batch = two clients sending /classify_batch with the best batch of images per request (what a
  camera gateway sends); and, for reference, --concurrency clients sending single images to /classify
  (adaptive batching up to the best batch). p50/p99 are per request.

The ratios (served ONNX / served torch, served / in-process) are computed per round and reported as the mean
with a 95% t-interval over the rounds. The 1-minute load average is printed beside every figure: this machine
is shared, and a figure taken under load is only comparable with figures taken under the same load.

The int8 artifact is served here without the gate's blessing (random weights cannot pass a precision gate):
the benchmark writes a verdict marked ``benchmark`` into its own throw-away bundle so that the service opens
it. A real bundle serves int8 only after ``visionops evaluate --runtime onnx-int8`` blessed it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_serving import ServerProcess, load_images

RUNTIMES = ("torch", "onnx", "onnx-int8")


def load() -> float:
    return os.getloadavg()[0]


def percentiles(values_ms: list[float]) -> tuple[float, float]:
    if len(values_ms) < 2:
        return float("nan"), float("nan")
    q = statistics.quantiles(values_ms, n=100)
    return q[49], q[98]


def t_interval(values: list[float]) -> tuple[float, float, float]:
    """Mean and two-sided 95% t-interval of ``values`` (rounds)."""
    from scipy import stats

    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, float("nan"), float("nan")
    half = stats.t.ppf(0.975, len(values) - 1) * statistics.stdev(values) / len(values) ** 0.5
    return mean, mean - half, mean + half


def make_bundle(arch: str, root: Path, images: list[bytes]) -> tuple[str, dict]:
    """A random-weight bundle, exported like ``visionops package`` (parity on 32 photos, int8 calibrated on 64
    others), with a benchmark-only int8 verdict so that the service opens the int8 graph."""
    import torch
    from visionops import onnx_runtime as ox
    from visionops.bundle import load_bundle, save_bundle, update_meta
    from visionops.images import decode_image
    from visionops.models import create_model, get_entry

    torch.manual_seed(0)
    meta = {
        "architecture": arch,
        "classes": ["glasses", "no_glasses"],
        "preprocess": get_entry(arch).preprocess,
    }
    uri = save_bundle(create_model(arch, 2), meta, str(root / arch))
    bundle = load_bundle(uri)
    pictures = [decode_image(b) for b in images[:96]]
    golden, calibration = bundle.to_tensor(pictures[:32]), bundle.to_tensor(pictures[32:96]).numpy()
    export = ox.build_export(bundle, golden, root / f"{arch}-export", calibration=calibration, measure=False)
    if export.meta["status"] != "ok":
        raise SystemExit(f"{arch}: export failed: {export.meta.get('reason')}")
    onnx_meta = ox.attach_export(uri, export)["onnx"]
    verdict = {
        "evaluation": {"blessed": True, "reasons": ["benchmark: NOT gated (random weights)"]},
        "threshold": 0.5,
        "artifact_sha256": onnx_meta["files"][ox.INT8_FILE]["sha256"],
    }
    update_meta(uri, runtime_evaluations={"onnx-int8": verdict})
    return uri, onnx_meta


def in_process_best_batch(uri: str, runtime: str, images: list[bytes], batches: list[int]) -> int:
    """The batch size (of ``batches``) with the most images/s for bytes -> answers, ~1 s each."""
    from visionops.serving.predictor import Predictor

    predictor = Predictor.load(uri, device="cpu", runtime=runtime)
    best, best_ips = batches[0], 0.0
    for bs in batches:
        predictor.predict(images[:bs])
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            predictor.predict([images[(done + i) % len(images)] for i in range(bs)])
            done += bs
        ips = done / (time.perf_counter() - started)
        if ips > best_ips:
            best, best_ips = bs, ips
    return best


def in_process(predictor, images: list[bytes], batch: int, seconds: float) -> dict:
    """images/s and per-call latency (ms) of ``predictor.predict`` on ``batch`` JPEGs at a time."""
    predictor.predict(images[:batch])
    latencies, done, started = [], 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        t0 = time.perf_counter()
        predictor.predict([images[(done + i) % len(images)] for i in range(batch)])
        latencies.append((time.perf_counter() - t0) * 1000)
        done += batch
    p50, p99 = percentiles(latencies)
    return {"ips": done / (time.perf_counter() - started), "p50": p50, "p99": p99, "load": load()}


async def served(url: str, images: list[bytes], clients: int, seconds: float, per_request: int = 1) -> dict:
    """Closed loop: ``clients`` send /classify (or /classify_batch with ``per_request`` images) back to back;
    images/s and per-request latency (ms)."""
    latencies: list[float] = []
    errors = 0
    stop_at = 0.0  # set after the warm-up
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    def request(i: int) -> tuple[str, list]:
        if per_request == 1:
            return "/classify", [("image", ("x.jpg", images[i % len(images)], "image/jpeg"))]
        picked = [images[(i + k) % len(images)] for k in range(per_request)]
        return "/classify_batch", [("images", ("x.jpg", data, "image/jpeg")) for data in picked]

    async def client(worker: int, http: httpx.AsyncClient) -> None:
        nonlocal errors
        i = worker * per_request
        while time.perf_counter() < stop_at:
            route, files = request(i)
            t0 = time.perf_counter()
            response = await http.post(route, files=files)
            if response.status_code == 200:
                latencies.append((time.perf_counter() - t0) * 1000)
            else:
                errors += 1
            i += clients * per_request

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:
        for _ in range(2):
            await http.post(*request(0)[:1], files=request(0)[1])
        started = time.perf_counter()
        stop_at = started + seconds
        await asyncio.gather(*(client(w, http) for w in range(clients)))
        elapsed = time.perf_counter() - started
    p50, p99 = percentiles(latencies)
    images_done = len(latencies) * per_request
    return {"ips": images_done / elapsed, "p50": p50, "p99": p99, "errors": errors, "load": load()}


def row(label: str, r: dict) -> str:
    extra = f"  errors {r['errors']}" if r.get("errors") else ""
    return f"  {label:42s}{r['ips']:9.1f}{r['p50']:9.1f}{r['p99']:9.1f}   load {r['load']:5.2f}{extra}"


def measure_round(rt: str, predictor, server, best: int, images: list[bytes], args) -> dict:
    """One round of one runtime: in-process and served, batch 1 and best batch."""
    return {
        (rt, "in", 1): in_process(predictor, images, 1, args.seconds),
        (rt, "in", "best"): in_process(predictor, images, best, args.seconds),
        (rt, "http", 1): asyncio.run(served(server.url, images, 1, args.seconds)),
        (rt, "http", "best"): asyncio.run(served(server.url, images, 2, args.seconds, per_request=best)),
        (rt, "http", "clients"): asyncio.run(served(server.url, images, args.concurrency, args.seconds)),
    }


def ratio(rounds: list[dict], top: tuple, bottom: tuple) -> list[float]:
    return [f[top]["ips"] / f[bottom]["ips"] if f[bottom]["ips"] else float("nan") for f in rounds]


def report(arch: str, args, best: dict, rounds: list[dict]) -> dict:
    """Print every figure with its load, then the ratios with their interval over the rounds."""
    print(
        f"\n{arch}, {args.threads} threads, {args.rounds} rounds of {args.seconds:.0f} s phases; per round:"
    )
    print(f"  {'':42s}{'img/s':>9s}{'p50 ms':>9s}{'p99 ms':>9s}")
    for r, figures in enumerate(rounds):
        print(f" round {r + 1}")
        for rt in RUNTIMES:
            for key, label in (
                ((rt, "in", 1), f"{rt} in-process batch 1"),
                ((rt, "in", "best"), f"{rt} in-process batch {best[rt]}"),
                ((rt, "http", 1), f"{rt} served batch 1 (1 client)"),
                ((rt, "http", "best"), f"{rt} served batch {best[rt]} (2 clients)"),
                ((rt, "http", "clients"), f"{rt} served /classify, {args.concurrency} clients"),
            ):
                print(row(label, figures[key]))
    best_http = ("http", "best")
    ratios = {
        "served onnx / served torch, best batch": ratio(rounds, ("onnx", *best_http), ("torch", *best_http)),
        "served onnx / served torch, batch 1": ratio(rounds, ("onnx", "http", 1), ("torch", "http", 1)),
        "served onnx / torch, /classify x clients": ratio(
            rounds, ("onnx", "http", "clients"), ("torch", "http", "clients")
        ),
        "served int8 / served torch, best batch": ratio(
            rounds, ("onnx-int8", *best_http), ("torch", *best_http)
        ),
        "in-process onnx / torch, best batch": ratio(rounds, ("onnx", "in", "best"), ("torch", "in", "best")),
        "served / in-process, onnx, best batch": ratio(rounds, ("onnx", *best_http), ("onnx", "in", "best")),
        "served / in-process, torch, best batch": ratio(
            rounds, ("torch", *best_http), ("torch", "in", "best")
        ),
        "served / in-process, int8, best batch": ratio(
            rounds, ("onnx-int8", *best_http), ("onnx-int8", "in", "best")
        ),
    }
    print(f"\n{arch} ratios: mean [95% t-interval over {args.rounds} rounds]   (per round)")
    summary = {}
    for name, values in ratios.items():
        mean, low, high = t_interval(values)
        summary[name] = (mean, low, high)
        print(
            f"  {name:44s}{mean:6.2f} [{low:5.2f}, {high:5.2f}]   ({', '.join(f'{v:.2f}' for v in values)})"
        )
    loads = [f[k]["load"] for f in rounds for k in f]
    print(f"  load average (1 min) during the measurements: {min(loads):.2f} .. {max(loads):.2f}")
    return summary


def bench_arch(arch: str, args, images: list[bytes], tmp: Path) -> dict:
    from visionops.serving.predictor import Predictor

    started_load = load()
    uri, onnx_meta = make_bundle(arch, tmp, images)
    parity = onnx_meta["parity"]
    print(
        f"\n== {arch}: exported; parity on 32 photos: max prob diff {parity['max_prob_diff']:.1e}, "
        f"{parity['decisions_differ']} decisions differ; int8 max prob diff "
        f"{onnx_meta['int8']['parity']['max_prob_diff']:.1e} (load {started_load:.2f})",
        flush=True,
    )
    best = {rt: in_process_best_batch(uri, rt, images, args.batches) for rt in RUNTIMES}
    print(f"   best in-process batch per runtime: {best} (load {load():.2f})", flush=True)
    servers = {}
    try:
        for rt in RUNTIMES:
            env = {
                "VISIONOPS_RUNTIME": rt,
                "VISIONOPS_TORCH_THREADS": str(args.threads),
                "VISIONOPS_MAX_BATCH_SIZE": str(max(2, best[rt])),
                "VISIONOPS_MAX_LATENCY_MS": "10000",  # a loaded box: measure throughput, do not shed load
                "VISIONOPS_MONITOR_URL": "",
            }
            log_path = tmp / f"{arch}-{rt}.log"
            servers[rt] = ServerProcess(uri, env, log_path)
            if f"runtime {rt} " not in log_path.read_text():
                raise SystemExit(f"the {rt} server did not serve with {rt}; see {log_path}")
        predictors = {
            rt: Predictor.load(uri, device="cpu", runtime=rt, threads=args.threads) for rt in RUNTIMES
        }
        rounds: list[dict] = []
        for r in range(args.rounds):
            figures: dict = {}
            for rt in RUNTIMES:
                figures.update(measure_round(rt, predictors[rt], servers[rt], best[rt], images, args))
            rounds.append(figures)
            print(f"   round {r + 1}/{args.rounds} done (load {load():.2f})", flush=True)
    finally:
        for server in servers.values():
            server.stop()
    return report(arch, args, best, rounds)


def main() -> None:
    from visionops.onnx_runtime import cpu_limit_threads

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--arch", action="append", help="architecture (repeatable); default mobilenet_v3_small and small_cnn"
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each measured phase")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (each measures every runtime once)")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16], help="batch sizes to try")
    parser.add_argument("--concurrency", type=int, default=16, help="clients for the served best-batch phase")
    parser.add_argument("--threads", type=int, default=0, help="intra-op threads (0 = the CPU limit)")
    args = parser.parse_args()
    args.threads = args.threads or cpu_limit_threads()
    archs = args.arch or ["mobilenet_v3_small", "small_cnn"]
    images, source = load_images(300)
    print(
        f"runtimes {', '.join(RUNTIMES)}; {len(images)} {source}; {os.cpu_count()} CPU cores, "
        f"{args.threads} threads; load average {load():.2f}"
    )
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp:
        for arch in archs:
            bench_arch(arch, args, images, Path(tmp))


if __name__ == "__main__":
    main()
