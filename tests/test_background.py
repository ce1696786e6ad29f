"""The one background writer: bounded, drop-and-count, batched, one shutdown contract, thread-safe."""

from __future__ import annotations

import threading
import time

from visionops.background import CLOSED, QUEUE_FULL, SHUTDOWN, SINK_ERROR, BackgroundWriter


def test_put_never_blocks_and_counts_what_a_full_queue_drops():
    gate = threading.Event()
    seen: list[int] = []
    drops: dict[str, int] = {}

    def sink(batch):
        gate.wait(5)
        seen.extend(batch)

    writer = BackgroundWriter(
        sink,
        name="t",
        max_items=10,
        batch_size=1,
        on_drop=lambda reason, n: drops.__setitem__(reason, drops.get(reason, 0) + n),
    )
    started = time.perf_counter()
    accepted = sum(writer.put(i) for i in range(1000))
    assert time.perf_counter() - started < 0.5, "put() must not wait for the sink"
    assert 10 <= accepted <= 11  # the thread may have taken one item before the sink blocked
    assert drops == {QUEUE_FULL: 1000 - accepted} and writer.dropped[QUEUE_FULL] == 1000 - accepted
    gate.set()
    assert writer.close(timeout=5) is True
    assert seen == list(range(accepted)), "accepted items arrive in order"
    assert writer.put(1) is False and writer.dropped[CLOSED] == 1


def test_byte_bound_drops_items_over_the_budget():
    gate = threading.Event()
    writer = BackgroundWriter(
        lambda batch: gate.wait(5), name="t", max_items=1000, max_bytes=100, cost=len, batch_size=1
    )
    results = [writer.put(b"x" * 30) for _ in range(10)]
    # at most 100 bytes queued (+1 item possibly already taken by the thread): 3 or 4 accepted
    assert sum(results) in (3, 4) and writer.queued_bytes <= 100
    gate.set()
    writer.close(timeout=5)
    assert writer.queued_bytes == 0


def test_items_arrive_in_batches():
    batches: list[list[int]] = []
    writer = BackgroundWriter(batches.append, name="t", batch_size=50, flush_seconds=0.2)
    for i in range(120):
        writer.put(i)
    assert writer.close(timeout=5)
    assert [x for b in batches for x in b] == list(range(120))
    assert max(len(b) for b in batches) == 50 and len(batches) <= 4


def test_close_deadline_drops_and_counts_what_is_left():
    def slow(batch):
        time.sleep(0.2)

    writer = BackgroundWriter(slow, name="t", batch_size=1, flush_seconds=0)
    for i in range(50):
        writer.put(i)
    started = time.perf_counter()
    assert writer.close(timeout=0.5) is False
    assert time.perf_counter() - started < 1.0, "close() keeps its deadline"
    assert writer.dropped[SHUTDOWN] >= 40 and writer.pending == 0
    assert writer.delivered + writer.dropped[SHUTDOWN] <= 50


def test_a_failing_sink_is_counted_and_never_reaches_the_caller():
    calls = []

    def sink(batch):
        calls.append(batch)
        if len(calls) == 1:
            raise OSError("disk full")

    writer = BackgroundWriter(sink, name="t", batch_size=5, flush_seconds=0.05)
    for i in range(5):
        writer.put(i)
    time.sleep(0.3)
    writer.put(99)
    assert writer.close(timeout=5)
    assert writer.dropped[SINK_ERROR] == 5 and writer.delivered == 1 and calls[-1] == [99]


def test_many_threads_put_concurrently_without_losing_count():
    got: list[int] = []
    lock = threading.Lock()

    def sink(batch):
        with lock:
            got.extend(batch)

    writer = BackgroundWriter(sink, name="t", max_items=500, batch_size=64, flush_seconds=0.01)
    accepted = [0] * 8

    def producer(k):
        accepted[k] = sum(writer.put(k * 10_000 + i) for i in range(2000))

    threads = [threading.Thread(target=producer, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert writer.close(timeout=10)
    assert len(got) == sum(accepted) == writer.accepted == writer.delivered
    assert sum(accepted) + writer.dropped[QUEUE_FULL] == 16_000
