"""Operational figures on the evaluation device: latency, throughput, size on disk, parameters, peak memory.

- latency: one decoded image at a time (batch 1), preprocessing + forward + softmax, after warm-up;
  p50/p95/p99 in milliseconds. The forward-only share is reported beside it.
- throughput: forward passes on already-preprocessed batches of each size in ``batch_sizes``; the best
  images/s and its batch size are kept.
- peak memory: CUDA: ``torch.cuda.max_memory_allocated`` over the throughput runs (weights + activations).
  CPU: the weights' bytes plus the largest rise of the process's resident set size (RSS, sampled every
  millisecond by a thread) over its level just before each run. RSS also counts allocator caching and other
  threads, so it is an estimate; the record says which method was used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)
MB = 1024 * 1024


def _rss_bytes() -> int:
    """Resident set size of this process (Linux /proc, else psutil, else 0)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        try:
            import psutil

            return int(psutil.Process().memory_info().rss)
        except ImportError:
            return 0


class _RssPeak:
    """Samples RSS in a background thread while the ``with`` block runs; ``.rise`` = peak - level at start."""

    def __init__(self, interval_s: float = 0.001) -> None:
        self.interval_s = interval_s
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(self.interval_s)

    def __enter__(self) -> _RssPeak:
        self.start = self.peak = _rss_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.peak = max(self.peak, _rss_bytes())

    @property
    def rise(self) -> int:
        return max(0, self.peak - self.start)


def _percentiles(values_ms: list[float]) -> dict[str, float]:
    arr = np.asarray(values_ms, dtype=float)
    return {
        "p50": float(np.percentile(arr, 50)),
        "p95": float(np.percentile(arr, 95)),
        "p99": float(np.percentile(arr, 99)),
        "mean": float(arr.mean()),
        "runs": len(arr),
    }


def measure_ops(
    bundle,
    images: list,
    *,
    device: str = "cpu",
    latency_runs: int = 50,
    batch_sizes: tuple[int, ...] = (1, 8, 32),
    warmup: int = 3,
    min_seconds_per_batch_size: float = 0.5,
) -> dict[str, Any]:
    """Measure latency, throughput, size and memory of ``bundle`` (loaded on ``device``) on sample PIL images."""
    import torch

    model = bundle.model
    cuda = str(device).startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    def one(img) -> None:
        x = bundle.transform(img).unsqueeze(0).to(device)
        with torch.inference_mode():
            torch.softmax(model(x), dim=1).cpu()

    for img in images[:warmup]:
        one(img)
    total, forward = [], []
    x1 = bundle.transform(images[0]).unsqueeze(0).to(device)
    for i in range(latency_runs):
        img = images[i % len(images)]
        sync()
        t0 = time.perf_counter()
        one(img)
        sync()
        total.append((time.perf_counter() - t0) * 1000)
        t0 = time.perf_counter()
        with torch.inference_mode():
            model(x1)
        sync()
        forward.append((time.perf_counter() - t0) * 1000)

    sample = torch.stack([bundle.transform(img) for img in images])
    weight_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    throughput, rss_rise = {}, 0
    for bs in sorted(set(batch_sizes)):
        idx = np.arange(bs) % len(sample)
        batch = sample[idx].to(device)
        with torch.inference_mode():
            model(batch)  # warm-up for this shape
        sync()
        with _RssPeak() as rss, torch.inference_mode():
            count, t0 = 0, time.perf_counter()
            while count < 3 or time.perf_counter() - t0 < min_seconds_per_batch_size:
                model(batch)
                sync()
                count += 1
            elapsed = time.perf_counter() - t0
        rss_rise = max(rss_rise, rss.rise)
        throughput[str(bs)] = bs * count / elapsed
    best_bs = max(throughput, key=throughput.get)
    if cuda:
        peak_mb = torch.cuda.max_memory_allocated(device) / MB
        method = "cuda max_memory_allocated over the throughput runs (weights + activations)"
    else:
        peak_mb = (weight_bytes + rss_rise) / MB
        method = (
            "cpu: weight bytes + peak rise of process RSS sampled every 1 ms during the throughput runs "
            "(estimate; includes allocator caching)"
        )
    # the file that serves: an ONNX artifact when the gate judges one, else the safetensors weights
    weights_file = (
        getattr(model, "artifact_file", None) or Path(bundle.local_dir or ".") / "model.safetensors"
    )
    return {
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device)
        if cuda
        else f"cpu ({torch.get_num_threads()} threads)",
        "latency_ms": _percentiles(total),
        "forward_latency_ms": _percentiles(forward),
        "throughput_images_per_s": float(throughput[best_bs]),
        "best_batch_size": int(best_bs),
        "throughput_by_batch_size": {k: float(v) for k, v in throughput.items()},
        "model_size_mb": weights_file.stat().st_size / MB if weights_file.is_file() else None,
        "parameters": int(sum(p.numel() for p in model.parameters())),
        "weights_mb": weight_bytes / MB,
        "peak_memory_mb": float(peak_mb),
        "memory_method": method,
        "torch": torch.__version__,
    }
