"""The monitoring path in its own process: drift-feature rows and the prediction log off the serving GIL.

Why a process: feature extraction, JSON encoding and HTTP posting on a background *thread* still compete
with request handling for the serving process's GIL (issue 23 measured 1.2-1.5x latency at half load).
Here the serving process does only what it must while it holds the request:

1. on the request's worker thread, a :class:`~visionops.features.Thumbnail` (96 px, about 27 KB) of the
   decoded image; the full image never reaches the monitoring path (this also bounds memory);
2. the probabilities and embeddings of the forward pass that already ran;
3. a non-blocking put of one :class:`PredictionEvent` on a :class:`~visionops.background.BackgroundWriter`
   bounded in events **and bytes**; its thread pickles batches of events (arrays: a memcpy) into a pipe.

A child process (``python -m visionops.serving.monitor_process``, niceness +19 so request handling goes
first) builds the rows with :class:`~visionops.features.RowMaker` (the code the drift reference uses, so
online and offline values are identical), then feeds them to a :class:`MonitorEmitter` (``POST /ingest``,
batched) and a :class:`PredictionLog`. It reports drops and counters back over its stdout, so the serving
process's Prometheus counters stay exact. A slow or dead child fills the bounded queue: events are dropped
and counted, serving never waits.

Frames on both pipes: a 4-byte big-endian length, then a pickle. Parent -> child: ``("config", dict)``
first, then ``("events", [PredictionEvent, ...])``, ``("feedback", monitor_payload, log_record)`` and
``("close", timeout)``. Child -> parent: ``("drop", reason, n)`` and ``("stats", dict, final)``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from visionops.background import BackgroundWriter

#: The ``reason`` label of prediction-log records that were not written (queue full, storage trouble).
LOG_DROPPED = "prediction_log"
log = logging.getLogger(__name__)

#: Byte budget of the serving-side queue: about 1,000 single-image events (thumbnail + embedding).
DEFAULT_QUEUE_BYTES = 32 * 1024 * 1024
#: Niceness of the child process (higher = lower priority than request handling).
CHILD_NICENESS = 19
#: How often the child reports its counters (``MonitorProcess.stats``) while events arrive.
STATS_EVERY_SECONDS = 0.5
_HEADER = struct.Struct(">I")


@dataclass
class PredictionEvent:
    """One request's answers as the monitoring path needs them: thumbnails, never full images."""

    thumbs: list[Any] | None  # Thumbnail per image, or None when the build has no drift features
    probs: Any  # (N, C) float32
    embeddings: Any  # (N, D) float32 or None
    answers: list[dict[str, Any]]
    time: str
    timestamp: float
    variant: str
    nbytes: int = field(default=0, compare=False)

    def __post_init__(self) -> None:
        if not self.nbytes:
            arrays = [t.pixels for t in self.thumbs or []] + [self.probs, self.embeddings]
            self.nbytes = sum(getattr(a, "nbytes", 0) for a in arrays) + 512 * len(self.answers)


def build_rows(maker, event: PredictionEvent) -> list[dict[str, Any]]:
    """The monitor / prediction-log rows of one event: feature columns (``maker`` is a RowMaker, or None
    where the build has no drift features) plus the answer's fields."""
    if maker is not None and event.thumbs is not None:
        features = maker.rows(event.thumbs, event.probs, event.embeddings)
    else:
        features = [{} for _ in event.answers]
    return [
        {
            **feats,
            "type": "prediction",
            "request_id": answer["request_id"],
            "time": event.time,
            "timestamp": event.timestamp,
            "model_version": answer["model_version"],
            "variant": event.variant,
            "prediction": answer["label"],
            "label": answer["label"],
            "confidence": answer["confidence"],
            "probability": answer["probability"],
            "probs": answer["probabilities"],
            "threshold": answer["threshold"],
        }
        for answer, feats in zip(event.answers, features, strict=True)
    ]


def write_frame(stream: BinaryIO, obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def read_frame(stream: BinaryIO) -> Any:
    """The next frame, or None at the end of the stream."""
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return None
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        return None
    return pickle.loads(data)


# -- serving side -------------------------------------------------------------------------------------------------
class MonitorProcess:
    """Serving's handle on the child process: :meth:`emit` / :meth:`feedback` never block."""

    def __init__(
        self,
        row_maker,
        *,
        monitor_url: str | None,
        prediction_log: str | None,
        queue_size: int = 10_000,
        queue_bytes: int = DEFAULT_QUEUE_BYTES,
        batch_events: int = 64,
        flush_seconds: float = 0.05,
        on_drop: Callable[[str, int], None] | None = None,
        headers: dict[str, str] | None = None,
        path_headers: dict[str, dict[str, str]] | None = None,
    ) -> None:
        self.monitor_url = monitor_url or None
        self.prediction_log = prediction_log or None
        self.on_drop = on_drop
        self.stats: dict[str, Any] = {}
        self._final = threading.Event()
        self._write_lock = threading.Lock()
        self._proc = self._start_child()
        write_frame(
            self._proc.stdin,
            (
                "config",
                {
                    "row_maker": row_maker,
                    "monitor_url": monitor_url,
                    "prediction_log": prediction_log,
                    # e.g. the reviewer token the sidecar's /feedback requires (over the pipe, never argv)
                    "headers": dict(headers or {}),
                    "path_headers": dict(path_headers or {}),  # the sidecar's tokens per endpoint
                },
            ),
        )
        self._reader = threading.Thread(
            target=self._read_reports, name="visionops-monitor-reports", daemon=True
        )
        self._reader.start()
        self._writer: BackgroundWriter[tuple] = BackgroundWriter(
            self._send,
            name="visionops-monitor-process",
            max_items=queue_size,
            max_bytes=queue_bytes,
            cost=lambda item: item[1].nbytes if item[0] == "event" else 512,
            batch_size=batch_events,
            flush_seconds=flush_seconds,
            on_drop=on_drop,
        )

    @staticmethod
    def _start_child() -> subprocess.Popen:
        import visionops

        root = str(Path(visionops.__file__).resolve().parents[1])
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p),
        }
        env.setdefault("OMP_NUM_THREADS", "1")
        return subprocess.Popen(
            [sys.executable, "-m", "visionops.serving.monitor_process"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
        )

    @property
    def dropped(self) -> dict[str, int]:
        """Events dropped on the serving side (queue full, pipe broken, shutdown)."""
        return self._writer.dropped

    def emit(self, event: PredictionEvent) -> bool:
        """Queue one request's event. Never blocks; False (and counted) when dropped."""
        return self._writer.put(("event", event))

    def feedback(self, monitor_payload: dict[str, Any] | None, log_record: dict[str, Any] | None) -> bool:
        """Queue one ground-truth label for the monitor's ``/feedback`` and/or the prediction log."""
        return self._writer.put(("feedback", (monitor_payload, log_record)))

    def _send(self, batch: list[tuple]) -> None:
        """Writer thread: events in one frame, feedback after them (in order), into the child's stdin."""
        events = [item for kind, item in batch if kind == "event"]
        with self._write_lock:
            if events:
                write_frame(self._proc.stdin, ("events", events))
            for kind, item in batch:
                if kind == "feedback":
                    write_frame(self._proc.stdin, ("feedback", *item))

    def _read_reports(self) -> None:
        """Reader thread: drops reported by the child reach ``on_drop`` (the Prometheus counter)."""
        while (frame := read_frame(self._proc.stdout)) is not None:
            if frame[0] == "drop" and self.on_drop is not None:
                try:
                    self.on_drop(frame[1], frame[2])
                except Exception:
                    log.exception("on_drop callback failed")
            elif frame[0] == "stats":
                self.stats = frame[1]
                if frame[2]:
                    self._final.set()

    def close(self, timeout: float = 5.0) -> bool:
        """Hand over what is queued, let the child deliver it, all within ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        done = self._writer.close(timeout / 2)
        # The writer thread may still be blocked on a full pipe (a slow child): wait for it within the deadline.
        if self._write_lock.acquire(timeout=max(0.0, deadline - time.monotonic() - 0.5)):
            try:
                write_frame(self._proc.stdin, ("close", max(0.1, deadline - time.monotonic() - 0.3)))
                self._proc.stdin.close()
            except OSError:
                done = False
            finally:
                self._write_lock.release()
        else:
            done = False
        self._final.wait(max(0.0, deadline - time.monotonic()))
        try:
            self._proc.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            self._proc.kill()
            done = False
        return done and self._proc.returncode == 0


# -- child side ---------------------------------------------------------------------------------------------------
def _child_main(stdin: BinaryIO, stdout: BinaryIO) -> int:
    """Read frames until ``close`` or the end of stdin; build rows; deliver them; report drops and stats."""
    from visionops.serving.emitter import MonitorEmitter
    from visionops.serving.prediction_log import PredictionLog

    # Before any thread exists: on Linux niceness is per thread and new threads inherit their creator's.
    with contextlib.suppress(OSError):
        os.nice(CHILD_NICENESS)
    report_lock = threading.Lock()

    def report(frame) -> None:
        with report_lock:
            write_frame(stdout, frame)

    first = read_frame(stdin)
    if first is None or first[0] != "config":
        return 2
    config = first[1]
    maker = config["row_maker"]
    emitter = None
    if config["monitor_url"]:
        emitter = MonitorEmitter(
            config["monitor_url"],
            on_drop=lambda reason, n: report(("drop", reason, n)),
            headers=config.get("headers"),
            path_headers=config.get("path_headers"),
        )
    plog = None
    if config["prediction_log"]:  # its drops are counted too, under their own reason
        plog = PredictionLog(config["prediction_log"], on_drop=lambda n: report(("drop", LOG_DROPPED, n)))
    events = 0
    close_timeout = 5.0
    last_report = time.monotonic()

    def stats(final: bool) -> tuple:
        return (
            "stats",
            {
                "events": events,
                "sent_rows": emitter.sent_rows if emitter else 0,
                "monitor_dropped": dict(emitter.dropped) if emitter else {},
                "logged_rows": plog.written if plog else 0,
                "log_dropped": plog.dropped if plog else 0,
            },
            final,
        )

    while (frame := read_frame(stdin)) is not None:
        kind = frame[0]
        if time.monotonic() - last_report > STATS_EVERY_SECONDS:
            report(stats(False))
            last_report = time.monotonic()
        if kind == "events":
            rows: list[dict[str, Any]] = []
            for event in frame[1]:
                try:
                    rows.extend(build_rows(maker, event))
                except Exception:
                    log.exception("building monitor rows failed; dropping the event")
                    report(("drop", "row_error", 1))
            events += len(frame[1])
            if rows:
                if emitter is not None:
                    emitter.emit(lambda rows=rows: rows)
                if plog is not None:
                    plog.append(lambda rows=rows: rows)
        elif kind == "feedback":
            monitor_payload, log_record = frame[1], frame[2]
            if emitter is not None and monitor_payload is not None:
                emitter.feedback(monitor_payload)
            if plog is not None and log_record is not None:
                plog.append(log_record)
        elif kind == "close":
            close_timeout = float(frame[1])
            break
    if emitter is not None:
        emitter.close(close_timeout / 2)
    if plog is not None:
        plog.close(close_timeout / 2)
    report(stats(True))
    return 0


def main() -> None:
    """Entry point of the child process (``python -m visionops.serving.monitor_process``)."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s monitor-process %(levelname)s %(message)s")
    stdout = sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the report frames
    sys.exit(_child_main(sys.stdin.buffer, stdout))


if __name__ == "__main__":
    main()
