"""The closed loop on real photos (issue 20): the real data source's slices, and a reduced
``visionops demo loop --real`` end to end (champion on lfw_5590, production net_7876 at 3.6%, serving + sidecar +
Prometheus + Alertmanager, review from captured traffic, merge, warm start, gate, held-out before/after)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import FACES, ROOT

STREAM = Path(os.environ.get("VISIONOPS_STREAM_DIR", ROOT.parent / "shared" / "data" / "faces-stream"))

pytestmark = pytest.mark.realdata


@pytest.fixture(scope="module")
def source():
    from visionops.demo.sources import RealSource

    if not (FACES / "manifest.csv").is_file() or not (STREAM / "manifest.csv").is_file():
        pytest.skip(
            f"real photos not found at {FACES} and {STREAM} (VISIONOPS_FACES_DIR / VISIONOPS_STREAM_DIR)"
        )
    return RealSource(FACES, STREAM, traffic_count=800, held_out_count=600, seed=3)


def test_real_source_slices_are_disjoint_and_the_held_out_slice_has_the_production_share(source):
    import pandas as pd

    traffic, held_out = source.production()
    assert len(held_out) == 600 and len(traffic) == 800
    assert not set(traffic.paths) & set(held_out.paths)  # no step sees the held-out slice
    stream = pd.read_csv(STREAM / "manifest.csv", dtype=str)
    production = stream[stream["mtfl_subset"] == "net_7876"]
    share = (production["label"] == "glasses").mean()
    assert source.production_prevalence() == pytest.approx(share)
    assert abs(held_out.share("glasses") * 600 - share * 600) <= 0.5  # stratified: the source's share
    by_file = dict(zip(stream["file"], stream["mtfl_subset"], strict=True))
    assert {by_file[str(Path(p).relative_to(STREAM.resolve()))] for p in traffic.paths} == {"net_7876"}
    champion = source.champion()
    faces = pd.read_csv(FACES / "manifest.csv", dtype=str)
    assert len(champion) == (faces["mtfl_subset"] == "lfw_5590").sum()
    assert champion.share("glasses") == pytest.approx(0.5)
    path = Path(held_out.paths[0])
    assert source.label_of(path.read_bytes()) == path.parent.name  # the scripted reviewer's answer
    assert source.label_of(b"not a photo of the folders") is None


@pytest.mark.slow
@pytest.mark.integration
@pytest.mark.skipif(
    os.environ.get("VISIONOPS_RUN_REAL_LOOP") != "1",
    reason="issue 20 is open: the champion's split of the 1,120 lfw_5590 photos tests thresholds on 78+78 images, "
    "where even a perfect model's precision bound is 0.945 < 0.95, so this check fails at champion_blessed "
    "(set VISIONOPS_RUN_REAL_LOOP=1 to run it)",
)
def test_reduced_real_loop_end_to_end(source, tmp_path):
    from visionops.demo.real import RealLoopConfig, run_real_loop

    cfg = RealLoopConfig.reduced(
        tmp_path / "real", champion_dir=FACES, stream_dir=STREAM, stage_timeout_s=900
    )
    lines: list[str] = []
    result = run_real_loop(cfg, echo=lines.append)
    summary = json.loads(result.summary_json.read_text())
    checks = summary["checks"]
    for name in ("champion_blessed", "no_false_alarm", "drift_detected", "retrain_triggered"):
        assert checks.get(name), (name, "\n".join(lines))
    info = summary["info"]
    assert 0 < info["labels_spent"] <= cfg.review_budget
    rows = info["before_after"]
    assert [r["model"] for r in rows] == ["champion", "new model"]
    assert all(r["n"] == cfg.held_out for r in rows)
    html = result.summary_html.read_text()
    assert "Before / after on the held-out slice" in html and "precision [95% Wilson]" in html
    new = rows[1]
    if info["verdict"] == "BLESSED":  # the promise: a blessed model meets the target on unseen photos
        assert checks.get("served_version_changed")
        assert new["tp"] / max(1, new["tp"] + new["fp"]) >= 0.95, new
    else:
        assert "served_version_changed" not in checks  # serving rolls forward only if blessed
