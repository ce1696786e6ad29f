"""The gate end to end: real tiny_cnn bundles (hand-set weights) on a real dataset of generated PNGs.

The "good" model reads the red channel, which decides the label in the generated images; the "bad" one reads
the green channel, which is noise. With hand-set weights the outcome is exact and needs no training.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from visionops import storage
from visionops.bundle import load_bundle, read_meta, save_bundle, update_meta
from visionops.data.manifest import write_dataset
from visionops.errors import GateError
from visionops.evaluation import GatePolicy, evaluate
from visionops.evaluation.behaviour import invariance, synthetic_tests
from visionops.models import create_model
from visionops.preprocess import PreprocessSpec

SPEC = PreprocessSpec(image_size=16, resize_size=16)
CLASSES = ["glasses", "no_glasses"]
# small, fast policy: the val split has 40 positives, so a perfect model's Wilson bound is 40/43.84 = 0.912
FAST = dict(
    target_precision=0.9,
    latency_runs=5,
    throughput_batch_sizes=(1, 8),
    behaviour_samples=10,
    min_directional_rate=None,
    min_functionality_rate=None,
)


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """The test machines are shared 2-core boxes: two spinning OpenMP threads make tiny forwards 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def handset_tiny_cnn(channel: int, slope: float = 4.0):
    """tiny_cnn whose P(glasses) = sigmoid(slope * (normalised mean of ``channel``)): every conv passes the
    channel through its centre tap, BatchNorm is the identity (first one shifts by +5 so ReLU keeps it)."""
    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    with torch.no_grad():
        convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
        for m in model.modules():
            if isinstance(m, torch.nn.Conv2d):
                m.weight.zero_()
            elif isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.zero_()
                m.running_var.fill_(1.0)
                m.weight.fill_(1.0)
                m.bias.zero_()
        convs[0].weight[0, channel, 1, 1] = 1.0
        for conv in convs[1:]:
            conv.weight[0, 0, 1, 1] = 1.0
        model.features[0][1].bias[0] = 5.0
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[0, 0] = slope
        model.head.bias[0] = -slope * 5.0
    return model.eval()


def make_bundle(path, channel: int, **meta) -> str:
    base = {"architecture": "tiny_cnn", "classes": CLASSES, "preprocess": SPEC}
    return save_bundle(handset_tiny_cnn(channel), {**base, **meta}, str(path))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> str:
    """144 16x16 PNGs: glasses are red (R >= 150), no_glasses are not (R <= 100); green is random."""
    root = tmp_path_factory.mktemp("evaldata")
    rng = np.random.default_rng(0)
    rows = []
    for split, per_class in (("train", 2), ("val", 40), ("test", 30)):
        for label in CLASSES:
            for i in range(per_class):
                red = rng.integers(150, 256) if label == "glasses" else rng.integers(0, 101)
                pixels = np.clip(
                    np.array([red, rng.integers(0, 256), 60]) + rng.integers(-3, 4, (16, 16, 3)), 0, 255
                ).astype(np.uint8)
                path = root / "images" / f"{split}_{label}_{i}.png"
                path.parent.mkdir(exist_ok=True)
                Image.fromarray(pixels).save(path)
                rows.append(
                    {
                        "path": str(path),
                        "label": label,
                        "sha256": f"{split}{label}{i}",
                        "width": 16,
                        "height": 16,
                        "split": split,
                        "group": "",
                        "lighting": ["dim", "bright"][i % 2],
                    }
                )
    return write_dataset(pd.DataFrame(rows), {"source": "test"}, str(root / "dataset")).uri


@pytest.fixture(scope="module")
def evaluated_good(tmp_path_factory, dataset):
    """The good model evaluated once with no champion (shared by the tests that read its outputs)."""
    root = tmp_path_factory.mktemp("good")
    uri = make_bundle(root / "bundle", channel=0)
    record = evaluate(uri, dataset, str(root / "eval"), policy=GatePolicy(**FAST))
    return uri, root / "eval", record


def _rules(record):
    return {r["name"]: r for r in record["rules"]}


def test_first_model_blessed_and_outputs_written(evaluated_good, dataset):
    uri, out, record = evaluated_good
    assert record["blessed"], record["reasons"]
    assert record["champion"] is None and record["golden_version"].startswith("gs-")
    assert {p.name for p in out.iterdir()} == {
        "metrics.json",
        "decision.json",
        "model_card.md",
        "model_card.html",
    }
    assert json.loads((out / "decision.json").read_text())["blessed"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["golden_version"] == record["golden_version"] == metrics["test"]["golden_version"]
    assert metrics["confusion_matrix"] == {"labels": CLASSES, "matrix": [[30, 0], [0, 30]]}
    assert set(metrics["roc"]) == {"fpr", "tpr", "thresholds"} and 2 <= len(metrics["roc"]["fpr"]) <= 200
    assert metrics["test"]["roc_auc"] == 1.0 and metrics["test"]["positive"]["recall"] == 1.0
    # threshold chosen on val: all 40 positives at the top -> Wilson bound 40/(40+z^2) >= 0.9 at the 40th
    assert (
        metrics["threshold"]["met"] and metrics["threshold"]["tp"] == 40 and metrics["threshold"]["fp"] == 0
    )
    assert metrics["threshold"]["precision_lower"] == pytest.approx(40 / (40 + 1.959964**2), abs=1e-6)
    assert {r["column"] for r in metrics["slices"]["rows"]} == {"lighting"}
    ops = metrics["ops"]
    assert ops["latency_ms"]["p50"] > 0 and ops["throughput_images_per_s"] > 0 and ops["parameters"] > 10_000
    assert ops["model_size_mb"] > 0 and ops["peak_memory_mb"] >= ops["weights_mb"]
    assert metrics["behaviour"]["invariance"]["status"] == "ran"
    assert metrics["behaviour"]["directional"]["status"] == "ran"  # render_pair is available
    # the threshold and the evaluation summary are written into the bundle
    meta = read_meta(uri)
    assert meta["threshold"] == metrics["threshold"]["threshold"] == record["challenger"]["threshold"]
    assert meta["threshold_info"]["chosen_on"] == "val" and meta["threshold_info"]["met"] is True
    assert meta["evaluation"]["golden_version"] == record["golden_version"]
    assert meta["evaluation"]["blessed"] is True and meta["evaluation"]["key_figures"]["recall"] == 1.0
    assert load_bundle(uri).threshold == meta["threshold"]


def test_model_card_is_self_contained_and_names_the_golden_set(evaluated_good):
    _, out, record = evaluated_good
    html = (out / "model_card.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html
    assert html.count('src="data:image/png;base64,') == 4  # sweep, confusion matrix, ROC/PR, reliability
    assert record["golden_version"] in html and "BLESSED" in html
    for section in ("Decision record", "Threshold sweep", "Slices", "Operations", "Behavioural tests"):
        assert section in html
    md = (out / "model_card.md").read_text()
    assert record["golden_version"] in md and "| precision_constraint |" in md


def test_worse_challenger_refused_against_stored_champion(evaluated_good, dataset, tmp_path):
    champion_uri, _, _ = evaluated_good
    worse = make_bundle(tmp_path / "worse", channel=1)  # reads the random green channel
    record = evaluate(
        worse, dataset, str(tmp_path / "eval"), champion_uri=champion_uri, policy=GatePolicy(**FAST)
    )
    rules = _rules(record)
    assert not record["blessed"]
    assert record["champion"]["source"].startswith("stored evaluation")  # not re-evaluated
    assert rules["recall_vs_champion"]["status"] == "fail"
    assert rules["recall_vs_champion"]["limit"] == pytest.approx(1.0 - 0.01)
    assert rules["precision_constraint"]["status"] == "fail"
    assert any(r.startswith("recall_vs_champion:") for r in record["reasons"])


def test_better_challenger_blessed_against_champion_evaluated_now(dataset, tmp_path):
    champion = make_bundle(tmp_path / "champion", channel=1)  # never evaluated: evaluated now, not modified
    before = read_meta(champion)
    better = make_bundle(tmp_path / "better", channel=0)
    record = evaluate(
        better, dataset, str(tmp_path / "eval"), champion_uri=champion, policy=GatePolicy(**FAST)
    )
    assert record["blessed"], record["reasons"]
    assert record["champion"]["source"] == "evaluated now"
    assert record["champion"]["recall_at_target_precision"] == 0.0
    assert _rules(record)["recall_vs_champion"]["value"] == 1.0
    assert read_meta(champion) == before


def test_ops_budget_refuses_an_otherwise_better_model(evaluated_good, dataset, tmp_path):
    champion = make_bundle(tmp_path / "champion", channel=1)
    better = make_bundle(tmp_path / "better", channel=0)
    record = evaluate(
        better,
        dataset,
        str(tmp_path / "eval"),
        champion_uri=champion,
        policy=GatePolicy(**FAST, max_model_mb=0.1),
    )
    rules = _rules(record)
    assert rules["recall_vs_champion"]["status"] == "pass"
    assert rules["model_size_mb"]["status"] == "fail" and rules["model_size_mb"]["value"] > 0.1
    assert not record["blessed"] and record["reasons"][0].startswith("model_size_mb: ")


def test_mismatched_golden_versions_are_refused(evaluated_good, dataset, tmp_path):
    good, _, _ = evaluated_good
    champion = make_bundle(tmp_path / "champion", channel=0, lineage={"golden_version": "gs-0123456789ab"})
    with pytest.raises(
        GateError,
        match=r"golden set versions differ: the champion .* records golden set "
        r"gs-0123456789ab, the dataset .* has gs-",
    ):
        evaluate(good, dataset, str(tmp_path / "eval"), champion_uri=champion, policy=GatePolicy(**FAST))
    stale = make_bundle(tmp_path / "stale", channel=0)
    update_meta(stale, evaluation={"golden_version": "gs-old", "summary": {}})
    with pytest.raises(GateError, match="records golden set gs-old"):
        evaluate(good, dataset, str(tmp_path / "eval"), champion_uri=stale, policy=GatePolicy(**FAST))
    challenger = make_bundle(tmp_path / "challenger", channel=0, lineage={"golden_version": "gs-other"})
    with pytest.raises(GateError, match="the challenger .* records golden set gs-other"):
        evaluate(challenger, dataset, str(tmp_path / "eval"), policy=GatePolicy(**FAST))
    assert not (tmp_path / "eval").exists()  # refused before any output


def test_impossible_target_is_reported_and_written(dataset, tmp_path):
    uri = make_bundle(tmp_path / "bundle", channel=0)
    record = evaluate(
        uri, dataset, str(tmp_path / "eval"), policy=GatePolicy(**{**FAST, "target_precision": 0.99})
    )
    rule = _rules(record)["precision_constraint"]
    assert not record["blessed"] and rule["status"] == "fail"
    # 40 clean positives cannot prove 0.99: the best Wilson bound is 50 / (50 + z^2)
    assert rule["value"] == pytest.approx(40 / (40 + 1.959964**2), abs=1e-6)
    assert "short of the target 0.99" in record["reasons"][0]
    assert read_meta(uri)["threshold_info"]["met"] is False


def test_behaviour_directional_on_render_pair_with_stand_in_models():
    pytest.importorskip("visionops.data.synth")

    class EyeBand:
        """P(glasses) from the share of eye-band pixels far from the band's median colour (frames, lenses)."""

        positive_class, positive_index, classes = "glasses", 0, CLASSES
        preprocess = PreprocessSpec(image_size=64, resize_size=96)

        def __init__(self, sign: float) -> None:
            self.sign = sign

        def predict_proba(self, images):
            shares = []
            for img in images:
                arr = np.asarray(img, dtype=float)
                h, w = arr.shape[:2]
                band = arr[int(h * 0.38) : int(h * 0.58), int(w * 0.2) : int(w * 0.8)].reshape(-1, 3)
                shares.append((np.abs(band - np.median(band, axis=0)).sum(axis=1) > 60).mean())
            p = 1 / (1 + np.exp(-self.sign * 20 * (np.array(shares) - 0.15)))
            return np.c_[p, 1 - p]

    good = synthetic_tests(EyeBand(1.0), 0.5, count=20)
    assert good["directional"]["status"] == "ran" and good["directional"]["rate"] >= 0.9
    assert good["directional"]["mean_increase"] > 0
    inverted = synthetic_tests(EyeBand(-1.0), 0.5, count=20)
    assert inverted["directional"]["rate"] <= 0.1
    assert good["minimum_functionality"]["n"] == 40
    other = EyeBand(1.0)
    other.positive_class = "helmet"
    assert synthetic_tests(other, 0.5, count=2)["directional"]["status"] == "skipped"


def test_behaviour_invariance_counts_flips(tmp_path):
    bundle_uri = make_bundle(tmp_path / "b", channel=0)
    bundle = load_bundle(bundle_uri)
    # R=124 sits on the decision boundary (normalised red ~0): +-10% brightness flips it; R=250 and R=10 don't
    images = [Image.new("RGB", (16, 16), (r, 80, 80)) for r in (124, 250, 10)]
    result = invariance(bundle, images, 0.5, delta=0.1)
    assert result["flipped"] == 1 and result["rate"] == pytest.approx(2 / 3)


@pytest.mark.integration
def test_evaluate_with_bundle_and_output_on_s3(s3, dataset, tmp_path):
    local = make_bundle(tmp_path / "bundle", channel=0)
    remote = save_bundle(handset_tiny_cnn(0), read_meta(local), f"{s3.bucket}/models/m1")
    out = f"{s3.bucket}/evals/m1"
    record = evaluate(remote, dataset, out, policy=GatePolicy(**FAST))
    assert record["blessed"]
    assert json.loads(storage.read_text(storage.join(out, "decision.json")))["verdict"] == "blessed"
    assert storage.exists(storage.join(out, "model_card.html"))
    assert read_meta(remote)["evaluation"]["golden_version"] == record["golden_version"]


def test_cli_end_to_end(dataset, tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    uri = make_bundle(tmp_path / "bundle", channel=1)  # a bad model: refused, exit code still 0
    out = tmp_path / "eval"
    policy = tmp_path / "policy.yaml"
    policy.write_text("max_memory_mb: null\nlatency_runs: 5\nthroughput_batch_sizes: [1, 4]\n")
    args = ["evaluate", uri, dataset, str(out), "--policy", str(policy), "--target-precision", "0.9"]
    result = CliRunner().invoke(app, [*args, "--max-model-mb", "50", "--min-throughput", "1"])
    assert result.exit_code == 0, result.output
    assert "verdict: refused" in result.output and "[   fail] precision_constraint" in result.output
    decision = json.loads((out / "decision.json").read_text())
    assert decision["policy"]["target_precision"] == 0.9 and decision["policy"]["max_model_mb"] == 50
    assert decision["policy"]["max_memory_mb"] is None and decision["policy"]["throughput_batch_sizes"] == [
        1,
        4,
    ]
    assert decision["blessed"] is False
    bad = CliRunner().invoke(app, [*args, "--interval", "exact"])
    assert "interval 'exact' unknown; valid: wilson, clopper-pearson" in str(bad.exception)


@pytest.mark.slow
def test_cli_error_exits_2_with_one_line(dataset, tmp_path):
    uri = make_bundle(tmp_path / "bundle", channel=0, lineage={"golden_version": "gs-elsewhere"})
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            "from visionops.cli import run; run()",
            "evaluate",
            uri,
            dataset,
            str(tmp_path / "eval"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "error: golden set versions differ" in proc.stderr and "Traceback" not in proc.stderr
