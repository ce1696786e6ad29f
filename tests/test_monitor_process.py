"""The monitoring path in its own process: same rows as the reference code, bounded, low priority, flushed."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest
from visionops.bundle import load_bundle
from visionops.features import RowMaker, feature_rows, thumbnail
from visionops.serving.monitor_process import MonitorProcess, PredictionEvent, build_rows
from visionops.serving.prediction_log import read_prediction_log

from tests.test_drift_support import tiny_bundle
from tests.test_features import noise_image
from tests.test_serving import Receiver, wait_until


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return load_bundle(tiny_bundle(str(tmp_path_factory.mktemp("monproc") / "bundle")))


def event_for(bundle, images, rid: str) -> PredictionEvent:
    probs, emb = bundle.score_images(images, with_embeddings=True)
    answers = [
        {
            "request_id": f"{rid}-{i}",
            "model_version": bundle.version,
            "label": label,
            "confidence": float(p[bundle.classes.index(label)]),
            "probability": float(p[bundle.positive_index]),
            "probabilities": dict(zip(bundle.classes, map(float, p), strict=True)),
            "threshold": bundle.threshold,
        }
        for i, (label, p) in enumerate(zip(bundle.decide(probs), probs, strict=True))
    ]
    return PredictionEvent(
        thumbs=[thumbnail(img) for img in images],
        probs=probs,
        embeddings=emb,
        answers=answers,
        time="2026-12-01T00:00:00+00:00",
        timestamp=0.0,
        variant="test",
    )


def test_rows_from_thumbnails_equal_the_reference_rows(bundle):
    images = [noise_image(seed, size=200 + 40 * seed) for seed in range(5)]
    projection = (np.zeros(96, np.float32), np.eye(96, 3, dtype=np.float32))
    maker = RowMaker.of(bundle, projection)
    online = build_rows(maker, event_for(bundle, images, "r"))
    offline = feature_rows(bundle, images, projection=projection)
    for got, want in zip(online, offline, strict=True):
        assert {k: got[k] for k in want} == want, "online features must equal the reference's exactly"
        assert {"emb_0", "emb_1", "emb_2"} <= set(got) and got["variant"] == "test"


def test_event_carries_a_thumbnail_never_the_image(bundle):
    big = noise_image(1, size=1024)
    event = event_for(bundle, [big], "t")
    assert event.thumbs[0].pixels.shape == (96, 96, 3) and event.thumbs[0].width == 1024
    assert event.nbytes < 40_000, "a 1024 px photo costs the queue a thumbnail, not 3 MB"


def test_child_delivers_rows_and_log_then_closes(bundle, tmp_path):
    receiver = Receiver()
    drops: list[tuple[str, int]] = []
    monitor = MonitorProcess(
        RowMaker.of(bundle),
        monitor_url=receiver.url,
        prediction_log=str(tmp_path / "log"),
        on_drop=lambda reason, n: drops.append((reason, n)),
    )
    try:
        pid = monitor._proc.pid
        assert wait_until(lambda: os.getpriority(os.PRIO_PROCESS, pid) >= 10, 10)
        images = [noise_image(s) for s in range(3)]
        for i in range(20):
            assert monitor.emit(event_for(bundle, images, f"req{i}"))
        assert monitor.feedback(
            {"request_id": "req0-0", "label": "glasses"}, {"request_id": "req0-0", "type": "feedback"}
        )
        assert monitor.close(timeout=20)
        rows = receiver.rows()
        assert len(rows) == 60 and rows[0]["request_id"] == "req0-0" and "brightness" in rows[0]
        assert receiver.received["/feedback"] == [{"request_id": "req0-0", "label": "glasses"}]
        logged = read_prediction_log(str(tmp_path / "log"))
        assert len(logged) == 61 and logged[-1]["type"] == "feedback"
        assert monitor.stats["sent_rows"] == 60 and monitor.stats["events"] == 20 and not drops
        assert json.dumps(rows[0])  # plain JSON values
    finally:
        receiver.stop()


def test_byte_bound_drops_and_counts_and_monitor_down_is_reported(bundle):
    drops: dict[str, int] = {}
    monitor = MonitorProcess(
        RowMaker.of(bundle),
        monitor_url="http://127.0.0.1:9",  # nothing listens there: the monitor is down
        prediction_log=None,
        queue_bytes=100_000,  # about three single-image events
        on_drop=lambda reason, n: drops.__setitem__(reason, drops.get(reason, 0) + n),
    )
    images = [noise_image(2)]
    event = event_for(bundle, images, "x")
    started = time.perf_counter()
    accepted = sum(monitor.emit(event) for _ in range(500))
    assert time.perf_counter() - started < 1.0, "emit() never waits for the child"
    assert accepted < 500 and drops.get("queue_full", 0) == 500 - accepted
    monitor.close(timeout=20)
    assert wait_until(lambda: drops.get("monitor_down", 0) > 0, 5)
