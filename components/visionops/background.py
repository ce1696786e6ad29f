"""One bounded background writer with one shutdown contract, for every fire-and-forget sink.

The monitor emitter, the prediction log, the payload capture and the experiment router's log all hand work
to a :class:`BackgroundWriter`: the caller's :meth:`~BackgroundWriter.put` never blocks, one low-priority
daemon thread drains the queue in batches into a ``sink(batch)`` callable, and the contract is the same
for all of them:

- **bounded**: at most ``max_items`` queued items and, when a ``cost`` function is given, at most
  ``max_bytes`` of their summed cost; an item over either bound is dropped and counted (``"queue_full"``);
- **batched**: the thread waits at most ``flush_seconds`` after the first item of a batch, or until
  ``batch_size`` items arrived, then calls ``sink`` once with the batch;
- **a failing sink never reaches the caller**: its exception is logged and the batch counted as dropped
  (``"sink_error"``); sinks that know better count their own drops and do not raise;
- **close** stops accepting (later puts are dropped as ``"closed"``), lets the thread deliver what is queued
  for at most ``timeout`` seconds, then drops and counts what is still queued (``"shutdown"``). It returns
  True when everything accepted was delivered.

All counters are updated under one lock, so any thread may put, read them or close.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

QUEUE_FULL = "queue_full"
CLOSED = "closed"
SHUTDOWN = "shutdown"
SINK_ERROR = "sink_error"
WRITER_DROP_REASONS = (QUEUE_FULL, CLOSED, SHUTDOWN, SINK_ERROR)
#: Niceness of writer threads: request handling goes first on a busy machine.
BACKGROUND_NICENESS = 10


def lower_thread_priority(niceness: int = BACKGROUND_NICENESS) -> None:
    """Make the calling thread yield CPU to request handling on a busy machine (Linux; no-op elsewhere)."""
    # Not Linux, or not permitted: the thread keeps normal priority.
    with contextlib.suppress(AttributeError, OSError):
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), niceness)


class BackgroundWriter(Generic[T]):
    """A bounded queue drained in batches by one background thread into ``sink``. See the module doc."""

    def __init__(
        self,
        sink: Callable[[list[T]], None],
        *,
        name: str,
        max_items: int = 10_000,
        max_bytes: int | None = None,
        cost: Callable[[T], int] | None = None,
        batch_size: int = 256,
        flush_seconds: float = 0.25,
        on_drop: Callable[[str, int], None] | None = None,
    ) -> None:
        if max_items < 1 or batch_size < 1 or flush_seconds < 0:
            raise ValueError("max_items and batch_size must be >= 1 and flush_seconds >= 0")
        self.sink = sink
        self.name = name
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.cost = cost or (lambda item: 0)
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.on_drop = on_drop
        self.accepted = 0
        self.delivered = 0  # items the sink took without raising
        self.dropped: dict[str, int] = dict.fromkeys(WRITER_DROP_REASONS, 0)
        self.queued_bytes = 0
        self._queue: queue.SimpleQueue[tuple[T, int]] = queue.SimpleQueue()
        self._queued = 0
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._thread: threading.Thread | None = None

    # -- caller side ------------------------------------------------------------------------------------------
    def put(self, item: T) -> bool:
        """Queue ``item`` for the sink; never blocks. False (and counted) when it was dropped."""
        size = int(self.cost(item)) if self.max_bytes is not None else 0
        with self._lock:
            if self._closed.is_set():
                reason = CLOSED
            elif self._queued >= self.max_items or (
                self.max_bytes is not None and self.queued_bytes + size > self.max_bytes
            ):
                reason = QUEUE_FULL
            else:
                reason = None
                self._queued += 1
                self.queued_bytes += size
                self.accepted += 1
                self._queue.put((item, size))
                if self._thread is None:
                    self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                    self._thread.start()
        if reason is not None:
            self.drop(reason, 1)
            return False
        return True

    @property
    def pending(self) -> int:
        """Items accepted but not yet handed to the sink."""
        with self._lock:
            return self._queued

    def drop(self, reason: str, n: int) -> None:
        """Count ``n`` dropped items (sinks call this for their own failures too) and tell ``on_drop``."""
        if n <= 0:
            return
        with self._lock:
            self.dropped[reason] = self.dropped.get(reason, 0) + n
        if self.on_drop is not None:
            try:
                self.on_drop(reason, n)
            except Exception:  # a metrics hiccup must never break delivery
                log.exception("%s: on_drop callback failed", self.name)

    def close(self, timeout: float = 5.0) -> bool:
        """Stop accepting, deliver what is queued within ``timeout`` s, drop and count the rest.

        Returns True when every accepted item reached the sink. Safe to call more than once.
        """
        with self._lock:
            self._closed.set()
            thread = self._thread
        if thread is not None:
            thread.join(max(0.0, timeout))
        left = self._take_all()
        if left:
            log.warning("%s: %d queued item(s) not delivered before the close deadline", self.name, left)
            self.drop(SHUTDOWN, left)
        return left == 0 and (thread is None or not thread.is_alive())

    # -- writer thread ----------------------------------------------------------------------------------------
    def _take(self, timeout: float) -> T | None:
        item, size = self._queue.get(timeout=timeout)
        with self._lock:
            self._queued -= 1
            self.queued_bytes -= size
        return item

    def _take_all(self) -> int:
        """Empty the queue without delivering (after the close deadline); returns how many items it held."""
        n = 0
        while True:
            try:
                self._take(0)
            except queue.Empty:
                return n
            n += 1

    def _batch(self) -> list[T]:
        """Up to ``batch_size`` items, waiting at most ``flush_seconds`` after the first one (not at all
        once closed: then the queue is only drained)."""
        batch: list[T] = []
        deadline = None
        while len(batch) < self.batch_size:
            closed = self._closed.is_set()
            if closed:
                timeout = 0.0
            elif deadline is None:
                timeout = 0.1  # idle: wake up now and then to notice close()
            else:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
            try:
                batch.append(self._take(timeout))
            except queue.Empty:
                if deadline is not None or closed:
                    break
                continue
            if deadline is None:
                deadline = time.monotonic() + self.flush_seconds
        return batch

    def _run(self) -> None:
        lower_thread_priority()
        while True:
            batch = self._batch()
            if batch:
                try:
                    self.sink(batch)
                except Exception:
                    log.exception("%s: writing a batch of %d failed; dropping it", self.name, len(batch))
                    self.drop(SINK_ERROR, len(batch))
                    continue
                with self._lock:
                    self.delivered += len(batch)
            elif self._closed.is_set():
                return
