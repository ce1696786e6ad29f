"""Every HTML artifact a person looks at renders in real headless Chromium without a console error and without
requesting anything outside its own file (the Kubeflow UI shows them in a sandboxed frame; clusters are often
air-gapped). Each artifact is made by its owner's library function on tiny inputs; the check is the browser's
request log, its console, and a screenshot.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import require_binary

pytestmark = pytest.mark.integration

ARTIFACTS = ("validation report", "model card", "drift report", "experiment analysis", "loop summary")


@pytest.fixture(scope="module")
def artifacts(tmp_path_factory) -> dict[str, Path]:
    """The five HTML reports, generated with the owners' functions on tiny data."""
    import numpy as np
    import pandas as pd
    from visionops.bundle import read_meta
    from visionops.data.ingest import ingest
    from visionops.data.synth import generate
    from visionops.data.validate import validate
    from visionops.demo.loop import Loop, LoopConfig
    from visionops.drift.detect import DriftPolicy, compute_drift, render_html
    from visionops.drift.reference import read_reference
    from visionops.evaluation import GatePolicy, evaluate
    from visionops.experiments.analysis import AnalysisConfig, analyze

    from tests.test_drift_support import draw_rows, feature_bundle, tiny_bundle

    root = tmp_path_factory.mktemp("reports")
    out: dict[str, Path] = {}

    images = generate(str(root / "images"), count=80, size=32, seed=0)
    dataset = str(root / "dataset")
    ingest(images, dataset, seed=0, workers=2, progress=False)
    validate(dataset, str(root / "validation"))
    out["validation report"] = root / "validation" / "validation.html"

    bundle = tiny_bundle(str(root / "bundle"))
    policy = GatePolicy(latency_runs=3, behaviour_samples=4, throughput_batch_sizes=(1,))
    evaluate(bundle, dataset, str(root / "evaluation"), policy=policy)
    out["model card"] = root / "evaluation" / "model_card.html"

    fb = feature_bundle(root / "drift-bundle")
    reference = read_reference(fb, read_meta(fb))
    current = pd.DataFrame(draw_rows(np.random.default_rng(1), 300, brightness=0.25))
    result = compute_drift(reference, current, DriftPolicy(), keep_frames=True)
    out["drift report"] = root / "drift.html"
    out["drift report"].write_text(render_html(result))

    rng = np.random.default_rng(0)
    rows = [
        {"request_id": f"r{i}", "variant": "ab"[i % 2], "label": "glasses" if rng.random() < 0.5 else "no_glasses",
         "status": 200}
        for i in range(400)
    ]  # fmt: skip
    logs = root / "logs.jsonl"
    logs.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    analyze(str(logs), config=AnalysisConfig(design="ab", control="a"), output=str(root / "experiment"))
    out["experiment analysis"] = root / "experiment" / "analysis.html"

    loop = Loop(LoopConfig(output=root / "loop"), echo=lambda line: None)
    loop.tl.add("pipeline", "champion blessed", root / "loop" / "decision")
    loop.check("champion_blessed", True, "gate", "champion blessed")
    loop.check("served_version_changed", False, "serving", "served model did not change")
    out["loop summary"] = loop.write_summary().summary_html
    return out


@pytest.mark.parametrize("name", ARTIFACTS)
def test_report_renders_offline_without_errors(artifacts, name, tmp_path):
    require_binary("chromium")
    from tests.chromium import render

    path = artifacts[name]
    assert path.read_text().lstrip().lower().startswith("<!doctype html"), f"{name} is not an HTML document"
    result = render(path, tmp_path / "shot.png")
    assert path.resolve().as_uri() in result.requests, "the request log did not see the page itself"
    assert result.external_requests == [], f"{name} requests things outside its file"
    assert result.console_errors == [], f"{name} logs console errors"
    assert result.screenshot.startswith(b"\x89PNG") and len(result.screenshot) > 5000, "blank screenshot"


def test_the_render_check_catches_external_requests_and_errors(tmp_path):
    """The harness can fail: a page that loads a remote script and throws is reported."""
    require_binary("chromium")
    from tests.chromium import render

    page = tmp_path / "bad.html"
    page.write_text(
        '<!DOCTYPE html><html><head><script src="https://cdn.example.com/x.js"></script></head>'
        "<body><p>x</p><script>throw new Error('boom')</script></body></html>"
    )
    result = render(page)
    assert any(u.startswith("https://cdn.example.com/") for u in result.external_requests)
    assert result.console_errors, "the thrown error was not seen"
