"""Hostile and careless input on the serving side, against real ``visionops serve`` processes on 127.0.0.1.

A bundle no model can be served with fails fast: ``visionops serve`` exits non-zero with one line naming the
field, before any server starts (no crash loop, no server answering nonsense).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import free_port

VISIONOPS = str(Path(sys.executable).with_name("visionops"))


@pytest.fixture(scope="module")
def saved_bundle(tmp_path_factory) -> Path:
    """A real tiny bundle written by save_bundle (weights hash and model version consistent)."""
    import torch
    from visionops.bundle import save_bundle
    from visionops.models import create_model, get_entry

    torch.manual_seed(0)
    meta = {
        "architecture": "tiny_cnn",
        "classes": ["glasses", "no_glasses"],
        "preprocess": get_entry("tiny_cnn").preprocess,
    }
    uri = tmp_path_factory.mktemp("hostile-serving") / "bundle"
    return Path(save_bundle(create_model("tiny_cnn", 2), meta, str(uri)))


# Edits of bundle.json that keep the weights hash and the model version (which covers architecture, classes
# and weights) consistent, so that only the edited field is wrong.
BAD_BUNDLES = {
    "threshold 2.0": ({"threshold": 2.0}, "threshold"),
    "threshold NaN": ({"threshold": float("nan")}, "threshold"),
    "positive class not a class": ({"positive_class": "helmet"}, "positive_class"),
    "image_size 0": ({"preprocess": {"image_size": 0, "resize_size": 0}}, "preprocess"),
    "image_size a string": ({"preprocess": {"image_size": "224px", "resize_size": 256}}, "preprocess"),
    "image_size huge": ({"preprocess": {"image_size": 10**9, "resize_size": 10**9}}, "preprocess"),
}


@pytest.mark.integration
@pytest.mark.parametrize("case", sorted(BAD_BUNDLES))
def test_serve_exits_nonzero_naming_the_bad_field(saved_bundle, tmp_path, case):
    change, field = BAD_BUNDLES[case]
    bad = tmp_path / "bad-bundle"
    bad.mkdir()
    for item in saved_bundle.iterdir():
        if item.is_file():
            (bad / item.name).write_bytes(item.read_bytes())
    meta = json.loads((saved_bundle / "bundle.json").read_text())
    meta.update(change)
    (bad / "bundle.json").write_text(json.dumps(meta))
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "VISIONOPS_INSECURE_CONTROL": "true"}
    done = subprocess.run(
        [VISIONOPS, "serve", "--model", str(bad), "--port", str(free_port())],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,  # a server that started would run until killed: failing fast means exiting in seconds
    )
    assert done.returncode == 2, (done.returncode, done.stdout[-2000:], done.stderr[-2000:])
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert f"field '{field}'" in lines[0] and str(bad) in lines[0]
    assert "serving" not in done.stdout  # the server was never started
