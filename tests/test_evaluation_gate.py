"""The gate end to end: real tiny_cnn bundles (hand-set weights) on a real dataset of generated PNGs.

The "good" model reads the red channel, which decides the label in the generated images; the "bad" one reads
the green channel, which is noise. With hand-set weights the outcome is exact and needs no training.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image
from visionops import storage
from visionops.bundle import load_bundle, read_meta, save_bundle
from visionops.data.manifest import write_dataset
from visionops.drift.reference import attach_reference
from visionops.errors import GateError
from visionops.evaluation import GatePolicy, evaluate
from visionops.evaluation.behaviour import invariance, synthetic_tests
from visionops.evaluation.threshold import precision_lower_bound
from visionops.models import create_model
from visionops.preprocess import PreprocessSpec

SPEC = PreprocessSpec(image_size=16, resize_size=16)
CLASSES = ["glasses", "no_glasses"]
# small, fast policy: the val split has 120 images per class (84 of each in the testing part of the fixed
# sequence), the golden set 80: enough for a perfect model to prove 0.9 at prevalence 0.5
FAST = dict(
    target_precision=0.9,
    latency_runs=5,
    throughput_batch_sizes=(1, 8),
    behaviour_samples=10,
    min_invariance_rate=0.7,  # the lowest positives sit near the certified threshold: brightness flips a few
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
    for split, per_class in (("train", 2), ("val", 120), ("test", 80)):
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
    attach_reference(uri, dataset, progress=False)  # a training bundle with its drift reference at 0.5
    before = tree_bytes(uri)
    record = evaluate(uri, dataset, str(root / "eval"), policy=GatePolicy(**FAST))
    assert tree_bytes(uri) == before  # the evaluated bundle is byte-identical after evaluation
    return uri, root / "eval", record


def tree_bytes(root) -> dict[str, bytes]:
    """Every file under ``root`` with its bytes."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(Path(root).rglob("*")) if p.is_file()}


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
        "bundle",
    }
    assert json.loads((out / "decision.json").read_text())["blessed"] is True
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["golden_version"] == record["golden_version"] == metrics["test"]["golden_version"]
    # no image without glasses called glasses; the certified threshold sits on the ordering part's lowest
    # positive, so a golden positive or two may fall just below it
    matrix = metrics["confusion_matrix"]["matrix"]
    assert metrics["confusion_matrix"]["labels"] == CLASSES and matrix[1] == [0, 80] and matrix[0][0] >= 78
    assert set(metrics["roc"]) == {"fpr", "tpr", "thresholds"} and 2 <= len(metrics["roc"]["fpr"]) <= 200
    assert metrics["test"]["roc_auc"] == 1.0 and metrics["test"]["positive"]["recall"] >= 78 / 80
    # threshold certified on val: (almost) all 84 testing-part positives above it, no negative
    choice = metrics["threshold"]
    assert choice["met"] and choice["tp"] >= 80 and choice["fp"] == 0 and choice["prevalence"] == 0.5
    expected = precision_lower_bound(choice["tp"], 84, 0, 84, 0.5, 0.025)
    assert choice["precision_lower"] == pytest.approx(float(expected))
    golden, tp = metrics["test"]["precision_at_prevalence"], metrics["test"]["positive"]["tp"]
    assert golden["lower"] == pytest.approx(float(precision_lower_bound(tp, 80, 0, 80, 0.5, 0.025)))
    assert {r["prevalence"] for r in metrics["test"]["precision_vs_prevalence"]} >= {0.036, 0.076, 0.5}
    assert {r["column"] for r in metrics["slices"]["rows"]} == {"lighting"}
    ops = metrics["ops"]
    assert ops["latency_ms"]["p50"] > 0 and ops["throughput_images_per_s"] > 0 and ops["parameters"] > 10_000
    assert ops["model_size_mb"] > 0 and ops["peak_memory_mb"] >= ops["weights_mb"]
    assert metrics["behaviour"]["invariance"]["status"] == "ran"
    assert metrics["behaviour"]["directional"]["status"] == "ran"  # render_pair is available
    # the threshold and the evaluation summary are in a new bundle version; the evaluated one is unchanged
    gated = record["gated_bundle"]
    assert gated == str(out / "bundle")
    meta, original = read_meta(gated), read_meta(uri)
    assert original["threshold"] == 0.5 and original.get("evaluation") is None
    assert meta["threshold"] == metrics["threshold"]["threshold"] == record["challenger"]["threshold"]
    assert meta["model_version"] == record["gated_model_version"] != original["model_version"]
    assert meta["parent_version"] == meta["weights_version"] == original["model_version"]
    assert meta["threshold_info"]["chosen_on"] == "val" and meta["threshold_info"]["met"] is True
    assert meta["evaluation"]["golden_version"] == record["golden_version"]
    assert meta["evaluation"]["blessed"] is True and meta["evaluation"]["key_figures"]["recall"] >= 78 / 80
    assert (Path(gated) / "reports" / "evaluation" / "model_card.html").is_file()
    assert load_bundle(gated).threshold == meta["threshold"]


def test_serving_and_reference_give_the_same_predicted_class(evaluated_good, dataset):
    """The gated bundle's drift reference is profiled with its final threshold: what serving answers."""
    from visionops.data.manifest import load_dataset
    from visionops.drift.reference import read_reference
    from visionops.features import feature_rows

    _, out, _ = evaluated_good
    gated = load_bundle(str(out / "bundle"))
    assert gated.threshold != 0.5
    reference = read_reference(gated.uri, gated.meta)
    assert gated.meta["drift"]["threshold"] == gated.threshold
    probs = np.c_[reference["positive_prob"], 1 - reference["positive_prob"]]  # classes: glasses first
    assert reference["predicted_class"].tolist() == gated.decide(probs)
    # serving's feature code on the same images gives the same answers, image by image
    val = load_dataset(dataset).split("val")
    images = [Image.open(p).convert("RGB") for p in val["path"]]
    served = pd.DataFrame(feature_rows(gated, images)).assign(label=val["label"].to_numpy())
    key = ["label", "positive_prob"]
    left = served.assign(positive_prob=served["positive_prob"].round(5)).sort_values(key)
    right = reference.assign(positive_prob=reference["positive_prob"].round(5)).sort_values(key)
    assert left["predicted_class"].tolist() == right["predicted_class"].tolist()
    assert reference["label"].value_counts(normalize=True)["glasses"] == pytest.approx(0.5)


def test_model_card_is_self_contained_and_names_the_golden_set(evaluated_good):
    _, out, record = evaluated_good
    html = (out / "model_card.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "@import" not in html and "url(http" not in html
    assert html.count('src="data:image/png;base64,') == 4  # sweep, confusion matrix, ROC/PR, reliability
    assert record["golden_version"] in html and "BLESSED" in html
    for section in (
        "Decision record",
        "Threshold sweep",
        "Precision against prevalence",
        "Slices",
        "Operations",
        "Behavioural tests",
    ):
        assert section in html
    md = (out / "model_card.md").read_text()
    assert record["golden_version"] in md and "| precision_constraint |" in md
    assert "FPR needed for 0.9" in md and "at production prevalence 0.5" in md


def test_worse_challenger_refused_against_stored_champion(evaluated_good, dataset, tmp_path):
    champion_uri, _, _ = evaluated_good
    worse = make_bundle(tmp_path / "worse", channel=1)  # reads the random green channel
    record = evaluate(
        worse, dataset, str(tmp_path / "eval"), champion_uri=champion_uri, policy=GatePolicy(**FAST)
    )
    rules = _rules(record)
    assert not record["blessed"]
    assert record["champion"]["source"].startswith("scored now on golden set")  # paired: same images
    assert rules["recall_vs_champion"]["status"] == "fail"
    champion_recall = record["champion"]["recall_at_target_precision"]
    assert champion_recall >= 78 / 80 and rules["recall_vs_champion"]["value"] == 0.0  # missed the constraint
    assert rules["recall_vs_champion"]["limit"] == pytest.approx(champion_recall - 0.05)
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
    assert record["champion"]["source"].startswith("scored now")
    assert record["champion"]["recall_at_target_precision"] == 0.0
    assert _rules(record)["recall_vs_champion"]["value"] == record["challenger"]["recall_at_target_precision"]
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


def test_golden_images_trained_on_are_refused_by_hash(evaluated_good, dataset, tmp_path):
    from visionops.data.manifest import load_dataset

    good, _, _ = evaluated_good
    frame = load_dataset(dataset).frame
    # a training dataset that put 3 of today's golden images into train
    leaked = frame.copy()
    leaked.loc[leaked.index[leaked["split"] == "test"][:3], "split"] = "train"
    leaky_data = write_dataset(leaked, {"source": "test"}, str(tmp_path / "leaky")).uri
    champion = make_bundle(
        tmp_path / "champion", channel=0, lineage={"golden_version": "gs-old", "dataset_uri": leaky_data}
    )
    with pytest.raises(
        GateError, match=r"3 of the 160 golden images .* are in the training data of the champion"
    ):
        evaluate(good, dataset, str(tmp_path / "eval"), champion_uri=champion, policy=GatePolicy(**FAST))
    # unreadable training data and another golden version: cannot be checked, refused
    blind = make_bundle(tmp_path / "blind", channel=0, lineage={"golden_version": "gs-0123456789ab"})
    with pytest.raises(
        GateError, match=r"golden set versions differ: the champion .* records golden set gs-0123456789ab"
    ):
        evaluate(good, dataset, str(tmp_path / "eval"), champion_uri=blind, policy=GatePolicy(**FAST))
    assert not (tmp_path / "eval").exists()  # refused before any output


def test_champion_and_challenger_compared_across_a_golden_extension(dataset, tmp_path):
    """A champion trained beside an older golden set is compared on the new one, once hashes prove that no
    new golden image was in its training data; the record says so."""
    clean = write_dataset(
        pd.DataFrame(
            [{"path": "x.png", "label": "glasses", "sha256": "never-golden", "width": 16, "height": 16,
              "split": "train", "group": ""}, {"path": "y.png", "label": "no_glasses", "sha256": "other",
              "width": 16, "height": 16, "split": "val", "group": ""}]
        ),
        {"source": "test"},
        str(tmp_path / "champion-data"),
    ).uri  # fmt: skip
    champion = make_bundle(
        tmp_path / "champion",
        channel=0,
        lineage={"golden_version": "gs-before-extension", "dataset_uri": clean},
    )
    challenger = make_bundle(tmp_path / "challenger", channel=0, lineage={"dataset_uri": dataset})
    record = evaluate(
        challenger, dataset, str(tmp_path / "eval"), champion_uri=champion, policy=GatePolicy(**FAST)
    )
    checks = {c["role"]: c for c in record["no_training_image_in_golden"]}
    assert checks["champion"]["checked_by_hash"] and checks["champion"]["overlap"] == 0
    assert checks["challenger"]["checked_by_hash"] and checks["challenger"]["golden_images"] == 160
    assert record["champion"]["source"].startswith(f"scored now on golden set {record['golden_version']}")
    paired = _rules(record)["recall_vs_champion"]
    assert paired["status"] == "pass" and "0 only by the champion" in paired["detail"]


def test_impossible_target_is_reported_and_written(dataset, tmp_path):
    uri = make_bundle(tmp_path / "bundle", channel=0)
    record = evaluate(
        uri, dataset, str(tmp_path / "eval"), policy=GatePolicy(**{**FAST, "target_precision": 0.99})
    )
    rule = _rules(record)["precision_constraint"]
    assert not record["blessed"] and rule["status"] == "fail"
    # 84 clean positives and negatives cannot prove 0.99 at 50/50; more of both would
    choice = json.loads((tmp_path / "eval" / "metrics.json").read_text())["threshold"]
    assert choice["fp"] == 0 and choice["n_positive"] == 84 and choice["tp"] >= 80
    assert rule["value"] == pytest.approx(float(precision_lower_bound(choice["tp"], 84, 0, 84, 0.5, 0.025)))
    assert "no threshold proves precision >= 0.99" in record["reasons"][0]
    assert "more negative and" in record["reasons"][0]
    assert read_meta(record["gated_bundle"])["threshold_info"]["met"] is False


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
    assert "minimum_functionality" not in good  # never on synthetic faces
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
    assert read_meta(remote).get("evaluation") is None  # published bundles are never rewritten
    assert read_meta(record["gated_bundle"])["evaluation"]["golden_version"] == record["golden_version"]
    assert record["gated_bundle"] == f"{out}/bundle"


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


def test_cli_options_generated_from_gate_policy_reach_the_recorded_policy(dataset, tmp_path):
    """Every GatePolicy field is a `visionops evaluate` option: options typed on the command line beat the
    --policy file, which beats the defaults, and decision.json records the policy that decided (it reads back
    into the same GatePolicy)."""
    from typer.testing import CliRunner
    from visionops.cli import app

    uri = make_bundle(tmp_path / "bundle", channel=0)
    out = tmp_path / "eval"
    policy_file = tmp_path / "policy.yaml"
    policy_file.write_text(
        "slice_min_n: 12\nlatency_runs: 3\nbehaviour_samples: 10\nmin_invariance_rate: 0.7\n"
    )
    options = ["--slice-min-n", "7", "--no-require-golden-precision", "--max-flagged-slices", "4"]
    options += [
        "--throughput-batch-size",
        "1",
        "--throughput-batch-size",
        "4",
        "--positive-prevalence",
        "0.3",
    ]
    options += ["--target-precision", "0.9", "--slice-correction", "bh", "--min-functionality-rate", "0.5"]
    result = CliRunner().invoke(
        app, ["evaluate", uri, dataset, str(out), "--policy", str(policy_file), *options]
    )
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "decision.json").read_text())["policy"]
    expected = GatePolicy(
        target_precision=0.9,
        positive_prevalence=0.3,
        require_golden_precision=False,
        max_flagged_slices=4,
        slice_min_n=7,  # the option, not the file's 12
        slice_correction="bh",
        min_functionality_rate=0.5,
        latency_runs=3,  # from the file
        behaviour_samples=10,
        min_invariance_rate=0.7,
        throughput_batch_sizes=(1, 4),
    )
    assert recorded == expected.to_dict()
    assert GatePolicy.from_dict(recorded) == expected
    names = {r["name"] for r in json.loads((out / "decision.json").read_text())["rules"]}
    assert "golden_precision" not in names  # --no-require-golden-precision reached the rules


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target-precision", "1.5"], "error: target_precision must be in (0, 1), got 1.5"),
        (["--interval", "exact"], "error: interval 'exact' unknown; valid: wilson, clopper-pearson"),
        (["--throughput-batch-size", "2.5"], "error: --throughput-batch-size must be whole numbers"),
        (["--positive-prevalence", "0"], "error: positive_prevalence must be in (0, 1) or None"),
        (["--max-model-mb", "big"], "Invalid value for '--max-model-mb'"),
    ],
)
def test_a_bad_gate_option_is_one_clear_line_before_any_work(args, message, tmp_path, monkeypatch, capsys):
    """A bad value is refused by the policy before the bundle is even read (these paths do not exist): exit 2,
    one line naming the field or option and the value, no traceback."""
    from visionops.cli import run

    missing = [str(tmp_path / "no-bundle"), str(tmp_path / "no-data"), str(tmp_path / "eval")]
    monkeypatch.setattr(sys, "argv", ["visionops", "evaluate", *missing, *args])
    with pytest.raises(SystemExit) as exit_info:
        run()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "eval").exists()


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


def test_minimum_functionality_only_on_a_curated_set_of_the_models_domain(dataset, tmp_path):
    """Without a curated set the test is skipped with the reason; with one (clear red / non-red images of this
    model's domain) it runs on exactly those images and decides."""
    uri = make_bundle(tmp_path / "bundle", channel=0)
    curated = tmp_path / "curated"
    for label, red in (("glasses", 230), ("no_glasses", 20)):
        (curated / label).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (16, 16), (red, 40 * i, 60)).save(curated / label / f"{i}.png")
    skipped = evaluate(
        uri, dataset, str(tmp_path / "e1"), policy=GatePolicy(**{**FAST, "min_functionality_rate": 0.9})
    )
    rule = _rules(skipped)["behaviour_minimum_functionality"]
    assert rule["status"] == "skipped" and "never used to judge a photo model" in rule["detail"]
    ran = evaluate(
        uri, dataset, str(tmp_path / "e2"),
        policy=GatePolicy(**{**FAST, "min_functionality_rate": 0.9, "functionality_set": str(curated)}),
    )  # fmt: skip
    rule = _rules(ran)["behaviour_minimum_functionality"]
    assert rule["status"] == "pass" and rule["value"] == 1.0 and "6 of 6 curated images" in rule["detail"]
    # invariance ran on both classes of the golden set (the manifest is sorted by label)
    metrics = json.loads((tmp_path / "e2" / "metrics.json").read_text())
    assert set(metrics["behaviour"]["invariance"]["per_class"]) == set(CLASSES)
