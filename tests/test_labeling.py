"""The labeling loop: selection, pre-labels, Label Studio / CSV export and import, the merge, the KFP step."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from visionops import bundle as bundle_mod
from visionops.errors import ConfigError, DataError
from visionops.images import encode_image
from visionops.labeling import (
    export,
    import_reviews,
    labeling_config,
    load_selection,
    prelabel,
    prepare_review_batch,
    select,
    wilson_interval,
)

CLASSES = ["glasses", "no_glasses"]
DAY = "2026-11-20"


# -- helpers --------------------------------------------------------------------------------------------------
def jpeg(seed: int, size: int = 24) -> bytes:
    """A small JPEG whose bytes differ for every seed."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return encode_image(Image.fromarray(pixels))


def write_captures(
    root: Path,
    probabilities: list[float],
    *,
    model_version: str,
    threshold: float = 0.5,
    day: str = DAY,
    first_seed: int = 0,
) -> list[str]:
    """Captures as serving writes them: <root>/<day>/<request_id>.jpg + .json with the stored prediction."""
    ids = []
    for i, p in enumerate(probabilities):
        rid = f"req-{first_seed + i:03d}"
        folder = root / day
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{rid}.jpg").write_bytes(jpeg(first_seed + i))
        label = "glasses" if p >= threshold else "no_glasses"
        record = {
            "request_id": rid,
            "time": f"{day}T10:00:{i % 60:02d}+00:00",
            "model_version": model_version,
            "label": label,
            "probability": p,
            "confidence": p if label == "glasses" else 1 - p,
            "probabilities": {"glasses": p, "no_glasses": 1 - p},
            "positive_class": "glasses",
            "threshold": threshold,
        }
        (folder / f"{rid}.json").write_text(json.dumps(record))
        ids.append(rid)
    return ids


def write_images(root: Path, count: int, first_seed: int = 100) -> list[Path]:
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = root / f"img-{i:03d}.jpg"
        path.write_bytes(jpeg(first_seed + i))
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def bundle_uri(tmp_path_factory) -> str:
    import torch
    from visionops.models import create_model, get_entry

    torch.manual_seed(0)
    model = create_model("tiny_cnn", 2)
    meta = {"architecture": "tiny_cnn", "classes": CLASSES, "preprocess": get_entry("tiny_cnn").preprocess}
    return bundle_mod.save_bundle(model, meta, str(tmp_path_factory.mktemp("bundle") / "champion"))


@pytest.fixture(scope="module")
def balanced_bundle(tmp_path_factory, bundle_uri) -> str:
    """The same model with its threshold at the median positive probability of the test images, so that
    its pre-labels hold both classes."""
    images_dir = tmp_path_factory.mktemp("probe")
    paths = write_images(images_dir, 12)
    from PIL import Image

    b = bundle_mod.load_bundle(bundle_uri)
    probs = b.predict_proba([Image.open(p).convert("RGB") for p in paths])[:, b.positive_index]
    target = str(tmp_path_factory.mktemp("bundle") / "balanced")
    import shutil

    shutil.copytree(bundle_uri, target)
    bundle_mod.update_meta(target, threshold=float(np.median(probs)))
    return target


def version_of(uri: str) -> str:
    return bundle_mod.read_meta(uri)["model_version"]


def scripted_reviewer(tasks: list[dict], flip: set[str], *, annotator: int = 7) -> list[dict]:
    """What Label Studio exports after a person accepted every pre-label except those in ``flip``."""
    exported = []
    for n, task in enumerate(tasks):
        predicted = task["predictions"][0]["result"][0]["value"]["choices"][0]
        label = predicted
        if task["data"]["request_id"] in flip:
            label = CLASSES[1 - CLASSES.index(predicted)]
        exported.append(
            {
                "id": 1000 + n,
                "data": task["data"],
                "annotations": [
                    {
                        "id": 5000 + n,
                        "completed_by": annotator,
                        "was_cancelled": False,
                        "result": [
                            {
                                "id": f"r{n}",
                                "from_name": "label",
                                "to_name": "image",
                                "type": "choices",
                                "value": {"choices": [label]},
                            }
                        ],
                    }
                ],
                "predictions": task["predictions"],
            }
        )
    return exported


# -- selection ------------------------------------------------------------------------------------------------
def test_selection_prefers_images_closest_to_the_threshold(tmp_path, bundle_uri):
    probs = [0.02, 0.1, 0.3, 0.45, 0.49, 0.52, 0.6, 0.8, 0.95, 0.99]
    ids = write_captures(tmp_path / "cap", probs, model_version=version_of(bundle_uri))
    sel = select(
        str(tmp_path / "cap"), str(tmp_path / "sel"), budget=4, random_share=0.0, bundle_uri=bundle_uri
    )
    # distances to 0.5: 0.49 -> .01, 0.52 -> .02, 0.45 -> .05, 0.6 -> .1
    assert list(sel.frame["request_id"]) == [ids[4], ids[5], ids[3], ids[6]]
    assert set(sel.frame["reason"]) == {"uncertain"}
    assert set(sel.frame["score_source"]) == {"capture"}  # the stored predictions were used, no model run
    np.testing.assert_allclose(sel.frame["probability"], [0.49, 0.52, 0.45, 0.6])
    assert sel.meta["counts"]["scored_by_model"] == 0
    assert (
        load_selection(str(tmp_path / "sel")).frame["request_id"].tolist() == sel.frame["request_id"].tolist()
    )


def test_threshold_comes_from_the_bundle(tmp_path, bundle_uri):
    target = tmp_path / "b"
    import shutil

    shutil.copytree(bundle_uri, target)
    bundle_mod.update_meta(str(target), threshold=0.9)
    probs = [0.1, 0.5, 0.85, 0.93, 0.99]
    ids = write_captures(tmp_path / "cap", probs, model_version=version_of(bundle_uri), threshold=0.5)
    sel = select(
        str(tmp_path / "cap"), str(tmp_path / "sel"), budget=2, random_share=0.0, bundle_uri=str(target)
    )
    assert list(sel.frame["request_id"]) == [ids[3], ids[2]]  # |0.93-0.9|, |0.85-0.9|
    assert set(sel.frame["threshold"]) == {0.9}


def test_budget_and_random_share(tmp_path):
    rng = np.random.default_rng(1)
    probs = [round(float(p), 4) for p in rng.uniform(0, 1, 40)]
    write_captures(tmp_path / "cap", probs, model_version="m-x")
    sel = select(str(tmp_path / "cap"), str(tmp_path / "s1"), budget=10, random_share=0.3, seed=3)
    frame = sel.frame
    assert len(frame) == 10
    assert (frame["reason"] == "random").sum() == 3 and (frame["reason"] == "uncertain").sum() == 7
    # each row records its selection probability: the uncertain stratum is taken whole, the random share is
    # 3 of the 33 other images
    probability = frame.groupby("reason")["selection_probability"].unique()
    assert list(probability["uncertain"]) == [1.0]
    assert list(probability["random"]) == [pytest.approx(3 / 33)]
    # every uncertain pick is at least as close to the threshold as every image that was not picked
    chosen = set(frame["request_id"])
    all_dist = {f"req-{i:03d}": abs(p - 0.5) for i, p in enumerate(probs)}
    left_out = [d for rid, d in all_dist.items() if rid not in chosen]
    assert frame.loc[frame["reason"] == "uncertain", "distance"].max() <= min(left_out)
    # the random share is reproducible with its seed and moves with it
    again = select(str(tmp_path / "cap"), str(tmp_path / "s2"), budget=10, random_share=0.3, seed=3)
    assert again.frame["request_id"].tolist() == frame["request_id"].tolist()
    other = [
        set(
            select(
                str(tmp_path / "cap"), str(tmp_path / f"s{s}"), budget=10, random_share=0.3, seed=s
            ).frame.query("reason == 'random'")["request_id"]
        )
        for s in (4, 5, 6)
    ]
    assert any(o != set(frame.query("reason == 'random'")["request_id"]) for o in other)
    everything = select(str(tmp_path / "cap"), str(tmp_path / "s9"), budget=100, random_share=1.0)
    assert len(everything.frame) == 40 and set(everything.frame["reason"]) == {"random"}
    with pytest.raises(ConfigError, match="random-share"):
        select(str(tmp_path / "cap"), str(tmp_path / "bad"), budget=5, random_share=1.5)
    with pytest.raises(ConfigError, match="budget"):
        select(str(tmp_path / "cap"), str(tmp_path / "bad"), budget=0)


def test_dedup_against_source_and_already_labeled_data(tmp_path):
    probs = [0.5, 0.51, 0.52, 0.53, 0.54, 0.55]
    ids = write_captures(tmp_path / "cap", probs, model_version="m-x")
    day = tmp_path / "cap" / DAY
    # a second capture of exactly the same bytes as req-000 (a client retry), even closer to the threshold
    (day / "req-dup.jpg").write_bytes((day / "req-000.jpg").read_bytes())
    (day / "req-dup.json").write_text(
        json.dumps(
            {
                "request_id": "req-dup",
                "time": f"{DAY}T11:00:00+00:00",
                "probabilities": {"glasses": 0.5, "no_glasses": 0.5},
                "positive_class": "glasses",
                "threshold": 0.5,
            }
        )
    )
    # a broken upload
    (day / "req-bad.jpg").write_bytes(b"not a jpeg")
    # req-001 was labeled before (a batch CSV with paths), req-002 is in a dataset manifest (by sha256)
    labeled_dir = tmp_path / "old"
    labeled_dir.mkdir()
    (labeled_dir / "a.jpg").write_bytes((day / "req-001.jpg").read_bytes())
    pd.DataFrame([{"path": "a.jpg", "label": "glasses"}]).to_csv(labeled_dir / "batch.csv", index=False)
    import hashlib

    sha2 = hashlib.sha256((day / "req-002.jpg").read_bytes()).hexdigest()
    pd.DataFrame([{"path": "x", "label": "glasses", "sha256": sha2}]).to_csv(
        tmp_path / "manifest.csv", index=False
    )

    sel = select(
        str(tmp_path / "cap"),
        str(tmp_path / "sel"),
        budget=10,
        random_share=0.0,
        labeled=[str(labeled_dir / "batch.csv"), str(tmp_path / "manifest.csv")],
    )
    got = set(sel.frame["request_id"])
    assert got == {ids[0], ids[3], ids[4], ids[5]}
    assert len(set(sel.frame["sha256"])) == len(sel.frame)
    counts = sel.meta["counts"]
    assert (counts["duplicates_in_source"], counts["already_labeled"], counts["unusable"]) == (1, 2, 1)
    skipped = pd.read_csv(tmp_path / "sel" / "skipped.csv")
    reasons = dict(zip(skipped["image"].map(lambda p: Path(p).stem), skipped["reason"], strict=True))
    assert reasons["req-dup"].startswith("duplicate of") and reasons["req-001"] == "already labeled"
    assert reasons["req-002"] == "already labeled" and reasons["req-bad"].startswith("not a usable image")
    # a previous selection counts as already sent: nothing is chosen twice
    again = select(str(tmp_path / "cap"), str(tmp_path / "sel2"), budget=10, labeled=[str(tmp_path / "sel")])
    assert not set(again.frame["request_id"]) & got
    with pytest.raises(DataError, match="not a dataset"):
        select(str(tmp_path / "cap"), str(tmp_path / "x"), budget=2, labeled=[str(tmp_path / "nowhere")])


def test_images_without_stored_predictions_are_scored_by_the_bundle(tmp_path, bundle_uri):
    paths = write_images(tmp_path / "imgs", 6)
    with pytest.raises(DataError, match="carry no stored prediction .* pass --model"):
        select(str(tmp_path / "imgs"), str(tmp_path / "sel"), budget=3)
    sel = select(
        str(tmp_path / "imgs"), str(tmp_path / "sel"), budget=6, bundle_uri=bundle_uri, random_share=0
    )
    from PIL import Image

    b = bundle_mod.load_bundle(bundle_uri)
    expected = b.predict_proba([Image.open(p).convert("RGB") for p in paths])[:, b.positive_index]
    got = sel.frame.set_index("image").loc[[str(p) for p in paths], "probability"].to_numpy()
    np.testing.assert_allclose(got, expected, atol=1e-6)
    assert set(sel.frame["score_source"]) == {"model"} and set(sel.frame["scored_by"]) == {b.version}
    # captures made by another model version are re-scored by the bundle given
    write_captures(tmp_path / "cap", [0.5, 0.9], model_version="m-older")
    resel = select(str(tmp_path / "cap"), str(tmp_path / "sel3"), budget=2, bundle_uri=bundle_uri)
    assert set(resel.frame["score_source"]) == {"model"}


def test_days_keeps_only_recent_captures(tmp_path):
    from datetime import UTC, datetime, timedelta

    today = datetime.now(UTC).date()
    write_captures(tmp_path / "cap", [0.4, 0.6], model_version="m", day=str(today), first_seed=0)
    write_captures(
        tmp_path / "cap", [0.5, 0.5], model_version="m", day=str(today - timedelta(days=30)), first_seed=10
    )
    sel = select(str(tmp_path / "cap"), str(tmp_path / "sel"), budget=10, days=7)
    assert sorted(sel.frame["request_id"]) == ["req-000", "req-001"]


# -- prelabel, export, import ---------------------------------------------------------------------------------
@pytest.fixture
def prelabeled(tmp_path, balanced_bundle):
    write_images(tmp_path / "imgs", 12)
    sel = select(
        str(tmp_path / "imgs"),
        str(tmp_path / "sel"),
        budget=12,
        bundle_uri=balanced_bundle,
        random_share=0.25,
    )
    return prelabel(sel.uri, balanced_bundle)


def test_prelabel_adds_the_bundles_decisions(prelabeled, balanced_bundle):
    from PIL import Image

    b = bundle_mod.load_bundle(balanced_bundle)
    frame = prelabeled.frame
    probs = b.predict_proba([Image.open(p).convert("RGB") for p in frame["image"]])
    assert frame["predicted_label"].tolist() == b.decide(probs)
    assert set(frame["predicted_label"]) == set(CLASSES)  # the threshold at the median splits them
    expected_conf = [p[CLASSES.index(lab)] for p, lab in zip(probs, b.decide(probs), strict=True)]
    np.testing.assert_allclose(frame["confidence"].astype(float), expected_conf, atol=1e-5)
    assert prelabeled.meta["prelabel"]["model_version"] == b.version
    assert json.loads(frame["probs"].iloc[0]).keys() == set(CLASSES)


def test_export_requires_prelabels(tmp_path, bundle_uri):
    write_images(tmp_path / "imgs", 3)
    sel = select(str(tmp_path / "imgs"), str(tmp_path / "sel"), budget=3, bundle_uri=bundle_uri)
    with pytest.raises(DataError, match="no pre-labels; run `visionops label prelabel"):
        export(sel.uri, str(tmp_path / "tasks.json"))
    with pytest.raises(ConfigError, match="unknown export format 'xml'"):
        export(sel.uri, str(tmp_path / "t.xml"), format="xml")


def test_label_studio_round_trip_with_a_scripted_reviewer(tmp_path, prelabeled):
    tasks_uri = export(prelabeled.uri, str(tmp_path / "tasks.json"), format="label-studio")
    tasks = json.loads(Path(tasks_uri).read_text())
    assert len(tasks) == 12
    first = tasks[0]
    result = first["predictions"][0]["result"][0]
    assert (result["from_name"], result["to_name"], result["type"]) == ("label", "image", "choices")
    assert first["predictions"][0]["model_version"] == prelabeled.meta["prelabel"]["model_version"]
    conf = prelabeled.frame.set_index("request_id").loc[first["data"]["request_id"], "confidence"]
    assert first["predictions"][0]["score"] == pytest.approx(float(conf))
    assert Path(first["data"]["image"]).is_file()  # local images stay paths

    frame = prelabeled.frame.set_index("request_id")
    order = [t["data"]["request_id"] for t in tasks]
    flip = {order[0], order[3], order[7], order[10]}
    exported = scripted_reviewer(tasks, flip)
    exported[5]["annotations"] = []  # nobody reviewed this one
    exported[6]["annotations"].append({"id": 1, "was_cancelled": True, "result": []})  # a skip
    (tmp_path / "export.json").write_text(json.dumps(exported))
    result = import_reviews(
        str(tmp_path / "export.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "imp")
    )

    reviewed = [rid for rid in order if rid != order[5]]
    pred = {rid: frame.loc[rid, "predicted_label"] for rid in reviewed}
    human = {rid: (CLASSES[1 - CLASSES.index(p)] if rid in flip else p) for rid, p in pred.items()}
    tp = sum(pred[r] == "glasses" and human[r] == "glasses" for r in reviewed)
    fp = sum(pred[r] == "glasses" and human[r] != "glasses" for r in reviewed)
    fn = sum(pred[r] != "glasses" and human[r] == "glasses" for r in reviewed)
    stats = result.agreement["all"]
    assert result.reviewed == 11 and result.changed == 4 and result.report["counts"]["unreviewed"] == 1
    assert stats["accuracy"]["successes"] == 7 and stats["accuracy"]["n"] == 11
    assert stats["accuracy"]["value"] == pytest.approx(7 / 11)
    assert (stats["precision"]["successes"], stats["precision"]["n"]) == (tp, tp + fp)
    assert (stats["recall"]["successes"], stats["recall"]["n"]) == (tp, tp + fn)
    low, high = wilson_interval(7, 11)
    assert (stats["accuracy"]["low"], stats["accuracy"]["high"]) == pytest.approx((low, high))
    # the random share is reported on its own (the unbiased live estimate)
    rand = [r for r in reviewed if frame.loc[r, "reason"] == "random"]
    assert result.agreement["random"]["n"] == len(rand) == 3
    assert result.agreement["random"]["changed"] == len(set(rand) & flip)

    batch = pd.read_csv(result.batch_uri, keep_default_na=False)
    assert list(batch.columns[:4]) == ["path", "label", "group", "label_source"]
    assert set(batch["label_source"]) == {"review"} and len(batch) == 11
    labels = dict(zip(batch["request_id"], batch["label"], strict=True))
    assert labels == human  # the corrected labels, not the model's
    assert all(Path(p).is_file() for p in batch["path"])
    reviews = pd.read_csv(tmp_path / "imp" / "reviews.csv")
    assert set(reviews.loc[~reviews["agreed"], "request_id"]) == flip
    feedback = [json.loads(line) for line in (tmp_path / "imp" / "feedback.jsonl").read_text().splitlines()]
    assert {f["request_id"]: f["label"] for f in feedback} == human
    saved = json.loads((tmp_path / "imp" / "agreement.json").read_text())
    assert saved["agreement"]["all"]["accuracy"]["successes"] == 7
    page = (tmp_path / "imp" / "agreement.html").read_text()
    assert "data:image/jpeg;base64," in page and 'src="http' not in page
    assert "0.636" in (tmp_path / "imp" / "agreement.md").read_text()  # 7/11
    assert (tmp_path / "imp" / "import.json").is_file()


def test_csv_round_trip(tmp_path, prelabeled):
    uri = export(prelabeled.uri, str(tmp_path / "review.csv"), format="csv")
    sheet = pd.read_csv(uri, keep_default_na=False)
    assert list(sheet.columns) == ["request_id", "image", "sha256", "predicted_label", "confidence", "label"]
    assert set(sheet["label"]) == {""}
    # the reviewer agrees with everything except the first two rows, and leaves the last row empty
    sheet["label"] = sheet["predicted_label"]
    for i in (0, 1):
        sheet.loc[i, "label"] = CLASSES[1 - CLASSES.index(sheet.loc[i, "predicted_label"])]
    sheet.loc[len(sheet) - 1, "label"] = ""
    sheet.to_csv(tmp_path / "filled.csv", index=False)
    result = import_reviews(
        str(tmp_path / "filled.csv"), format="csv", selection_uri=prelabeled.uri, output=str(tmp_path / "imp")
    )
    assert result.reviewed == 11 and result.changed == 2
    assert result.agreement["all"]["accuracy"]["successes"] == 9
    batch = pd.read_csv(result.batch_uri)
    assert batch.set_index("request_id").loc[sheet.loc[0, "request_id"], "label"] == sheet.loc[0, "label"]


def test_bad_imports_fail_clearly(tmp_path, prelabeled):
    tasks = json.loads(Path(export(prelabeled.uri, str(tmp_path / "t.json"))).read_text())
    ids = [t["data"]["request_id"] for t in tasks]

    def run(exported):
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(exported))
        return import_reviews(str(path), selection_uri=prelabeled.uri, output=str(tmp_path / "imp"))

    typo = scripted_reviewer(tasks, set())
    typo[2]["annotations"][0]["result"][0]["value"]["choices"] = ["glases"]
    with pytest.raises(
        DataError, match=rf"unknown labels \(valid: glasses, no_glasses\) \(1\):\n.*{ids[2]}.*'glases'"
    ):
        run(typo)

    stranger = scripted_reviewer(tasks, set())
    stranger[0]["data"] = {"request_id": "req-unknown", "sha256": "0" * 64, "image": "x.jpg"}
    with pytest.raises(DataError, match="not in the selection .*\n.*request_id=req-unknown"):
        run(stranger)

    # two annotators disagree on one image; a duplicated task disagrees on another
    disagree = scripted_reviewer(tasks, set())
    other = scripted_reviewer(tasks, set(ids), annotator=9)
    disagree[1]["annotations"].append(other[1]["annotations"][0])
    disagree.append(other[4])
    with pytest.raises(DataError, match="conflicting answers for the same image") as err:
        run(disagree)
    assert ids[1] in str(err.value) and ids[4] in str(err.value) and "by 9" in str(err.value)

    several = scripted_reviewer(tasks, set())
    several[3]["annotations"][0]["result"][0]["value"]["choices"] = list(CLASSES)
    with pytest.raises(DataError, match="several labels for one image"):
        run(several)

    Path(prelabeled.frame.set_index("request_id").loc[ids[6], "image"]).unlink()
    with pytest.raises(DataError, match=f"whose file is missing \\(1\\):\n  - {ids[6]}"):
        run(scripted_reviewer(tasks, set()))

    empty = scripted_reviewer(tasks, set())
    for t in empty:
        t["annotations"] = []
    (tmp_path / "empty.json").write_text(json.dumps(empty))
    with pytest.raises(DataError, match="holds no answers"):
        import_reviews(
            str(tmp_path / "empty.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "i2")
        )
    (tmp_path / "notjson.json").write_text("{")
    with pytest.raises(DataError, match="not valid JSON"):
        import_reviews(
            str(tmp_path / "notjson.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "i3")
        )
    assert not (tmp_path / "imp").exists()  # nothing was written by a refused import


def real_export_task(n: int, task: dict, label: str) -> dict:
    """One task exactly as Label Studio 1.23.2 exports it (JSON), after a person annotated it."""
    prediction = {
        **task["predictions"][0],
        "id": n,
        "created_ago": "0\u00a0minutes",
        "cluster": None,
        "neighbors": None,
        "mislabeling": 0.0,
        "model": None,
        "model_run": None,
        "task": n,
        "project": 1,
    }
    return {
        "id": n,
        "drafts": [],
        "data": task["data"],
        "meta": {},
        "allow_skip": True,
        "inner_id": n,
        "total_annotations": 1,
        "cancelled_annotations": 0,
        "total_predictions": 1,
        "comment_count": 0,
        "unresolved_comment_count": 0,
        "last_comment_updated_at": None,
        "project": 1,
        "updated_by": 1,
        "comment_authors": [],
        "created_at": "2026-11-23T14:09:53.429556Z",
        "annotations": [
            {
                "id": n,
                "completed_by": 1,
                "was_cancelled": False,
                "ground_truth": False,
                "result": [
                    {
                        "from_name": "label",
                        "to_name": "image",
                        "type": "choices",
                        "value": {"choices": [label]},
                    }
                ],
                "draft_created_at": None,
                "lead_time": None,
                "prediction": prediction,
                "result_count": 1,
                "unique_id": f"87cae5c8-d598-49d3-a13c-{n:012d}",
                "import_id": None,
                "last_action": None,
                "bulk_created": False,
                "task": n,
                "project": 1,
                "updated_by": 1,
                "parent_prediction": None,
                "parent_annotation": None,
                "last_created_by": None,
            }
        ],
        "predictions": [prediction],
    }


def test_reads_a_real_label_studio_export(tmp_path, prelabeled):
    tasks = json.loads(Path(export(prelabeled.uri, str(tmp_path / "t.json"))).read_text())
    exported = []
    for n, task in enumerate(tasks, start=1):
        predicted = task["predictions"][0]["result"][0]["value"]["choices"][0]
        exported.append(
            real_export_task(n, task, CLASSES[1 - CLASSES.index(predicted)] if n <= 2 else predicted)
        )
    (tmp_path / "export.json").write_text(json.dumps(exported))
    result = import_reviews(
        str(tmp_path / "export.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "i")
    )
    assert (result.reviewed, result.changed) == (12, 2)
    assert result.agreement["all"]["accuracy"]["successes"] == 10


def test_label_studio_json_min_export_is_read(tmp_path, prelabeled):
    rows = prelabeled.frame.to_dict("records")
    flat = [
        {
            "id": i,
            "image": "ignored",
            "request_id": r["request_id"],
            "sha256": r["sha256"],
            "label": r["predicted_label"],
            "annotator": "a@example.com",
        }
        for i, r in enumerate(rows[:5])
    ]
    flat[0]["label"] = CLASSES[1 - CLASSES.index(rows[0]["predicted_label"])]
    (tmp_path / "min.json").write_text(json.dumps(flat))
    result = import_reviews(
        str(tmp_path / "min.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "imp")
    )
    assert result.reviewed == 5 and result.changed == 1
    reviews = pd.read_csv(tmp_path / "imp" / "reviews.csv")
    assert set(reviews["annotators"]) == {"a@example.com"}


def test_wilson_interval_known_values():
    low, high = wilson_interval(7, 10)
    assert (round(low, 4), round(high, 4)) == (0.3968, 0.8922)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(10, 10)[1] == pytest.approx(1.0)


def test_labeling_config_matches_the_exported_tasks():
    xml = labeling_config(CLASSES)
    from xml.etree import ElementTree

    root = ElementTree.fromstring(xml)
    choices = root.find("Choices")
    assert choices.get("name") == "label" and choices.get("toName") == "image"
    assert root.find("Image").get("name") == "image" and root.find("Image").get("value") == "$image"
    assert [c.get("value") for c in choices.findall("Choice")] == CLASSES


# -- object storage -------------------------------------------------------------------------------------------
@pytest.mark.integration
def test_presigned_links_fetch_the_image_bytes(tmp_path, s3, bundle_uri):
    import httpx
    from visionops import storage

    local = tmp_path / "cap"
    write_captures(local, [0.3, 0.5, 0.7], model_version=version_of(bundle_uri))
    prefix = f"{s3.bucket}/captures"
    for path in local.rglob("*"):
        if path.is_file():
            storage.write_bytes(f"{prefix}/{path.relative_to(local).as_posix()}", path.read_bytes())
    summary = prepare_review_batch(prefix, f"{s3.bucket}/reviews/{{date}}", bundle_uri=bundle_uri, budget=3)
    assert summary["output"].startswith(f"{s3.bucket}/reviews/20") and summary["selected"] == 3
    tasks = json.loads(storage.read_text(summary["tasks"]))
    for task in tasks:
        url = task["data"]["image"]
        assert url.startswith(s3.endpoint) and "X-Amz-Signature=" in url and "X-Amz-Expires=604800" in url
        response = httpx.get(url, timeout=10)
        assert response.status_code == 200
        image_uri = f"{prefix}/{DAY}/{task['data']['request_id']}.jpg"
        assert response.content == storage.read_bytes(image_uri)
    import io

    sheet = pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(summary["output"], "review.csv"))))
    assert sheet["image"].str.contains("X-Amz-Signature=").all()
    assert '<Choice value="glasses"/>' in storage.read_text(summary["labeling_config"])
    # links signed for the address reviewers use
    from datetime import timedelta

    public = export(
        summary["selection"],
        str(tmp_path / "pub.json"),
        presign_endpoint="https://minio.example.com",
        url_expiry=timedelta(hours=2),
    )
    url = json.loads(Path(public).read_text())[0]["data"]["image"]
    assert url.startswith("https://minio.example.com/") and "X-Amz-Expires=7200" in url
    with pytest.raises(ConfigError, match="7 days"):
        export(summary["selection"], str(tmp_path / "x.json"), url_expiry=timedelta(days=8))


# -- merge into the next dataset version ----------------------------------------------------------------------
def test_combined_labels_keep_the_golden_set_fixed_and_apply_corrections(tmp_path):
    import hashlib

    from visionops.data.manifest import write_dataset
    from visionops.labeling import write_combined_labels

    paths = write_images(tmp_path / "old", 6, first_seed=900)
    splits = ["train", "train", "train", "val", "test", "test"]
    frame = pd.DataFrame(
        {
            "path": [str(p) for p in paths],
            "label": ["glasses", "no_glasses"] * 3,
            "sha256": [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths],
            "width": 24,
            "height": 24,
            "split": splits,
            "group": [f"g{i}" for i in range(6)],
            "camera": "gate-1",
        }
    )
    previous = write_dataset(frame, {"source": "test"}, str(tmp_path / "ds-v1"))
    new = write_images(tmp_path / "new", 2, first_seed=950)
    batch = pd.DataFrame(
        [
            {"path": str(paths[0]), "label": "no_glasses"},  # a correction of a training image
            {"path": str(paths[4]), "label": "no_glasses"},  # a golden image: must stay as it is
            {"path": f"../new/{new[0].name}", "label": "glasses"},  # relative to the batch CSV
            {"path": str(new[1]), "label": "no_glasses"},
        ]
    ).assign(group="", label_source="review", request_id=["r0", "r4", "n0", "n1"])
    (tmp_path / "imp").mkdir()
    batch.to_csv(tmp_path / "imp" / "batch.csv", index=False)
    out = write_combined_labels(
        previous.uri, str(tmp_path / "imp" / "batch.csv"), str(tmp_path / "labels.csv")
    )
    combined = pd.read_csv(out, keep_default_na=False)
    assert list(combined.columns[:3]) == ["path", "label", "group"]
    assert not {"split", "sha256", "width", "source"} & set(combined.columns)  # ingestion computes those
    # 4 train/val rows, one of them replaced by its correction; 2 new; golden rows and the golden duplicate out
    assert len(combined) == 4 - 1 + 1 + 2
    by_path = combined.groupby("path")["label"].agg(list).to_dict()
    assert by_path[str(paths[0])] == ["no_glasses"]  # the reviewed label wins
    assert str(paths[4]) not in by_path and str(paths[5]) not in by_path  # ingest(golden=...) brings them
    assert by_path[str(new[0].resolve())] == ["glasses"]
    assert set(combined.loc[combined["label_source"] == "review", "request_id"]) == {"r0", "n0", "n1"}
    assert set(combined.loc[combined["label_source"] == "", "camera"]) == {"gate-1"}
    with pytest.raises(DataError, match=r"labels \['cat'\] that dataset"):
        pd.DataFrame([{"path": str(new[1]), "label": "cat"}]).to_csv(tmp_path / "bad.csv", index=False)
        write_combined_labels(previous.uri, str(tmp_path / "bad.csv"), str(tmp_path / "x.csv"))


@pytest.mark.slow
def test_merge_gives_a_new_version_with_corrected_labels_and_the_same_golden_set(tmp_path, prelabeled):
    from visionops.data.ingest import ingest
    from visionops.labeling import merge_batch

    base = tmp_path / "base"
    rows = []
    for cls in CLASSES:
        for i, path in enumerate(write_images(base / cls, 20, first_seed=500 + 100 * CLASSES.index(cls))):
            rows.append({"path": f"{cls}/{path.name}", "label": cls, "group": f"{cls}-{i}"})
    pd.DataFrame(rows).to_csv(base / "labels.csv", index=False)
    previous = ingest(str(base / "labels.csv"), str(tmp_path / "ds-v1"), seed=0)

    tasks = json.loads(Path(export(prelabeled.uri, str(tmp_path / "t.json"))).read_text())
    flip = {tasks[0]["data"]["request_id"], tasks[1]["data"]["request_id"]}
    (tmp_path / "e.json").write_text(json.dumps(scripted_reviewer(tasks, flip)))
    result = import_reviews(
        str(tmp_path / "e.json"), selection_uri=prelabeled.uri, output=str(tmp_path / "imp")
    )

    merged = merge_batch(str(tmp_path / "ds-v1"), result.batch_uri, str(tmp_path / "ds-v2"))
    assert merged.golden_version == previous.golden_version
    assert merged.version != previous.version
    reviews = pd.read_csv(tmp_path / "imp" / "reviews.csv")
    by_sha = merged.frame.set_index("sha256")
    for row in reviews.itertuples():
        assert by_sha.loc[row.sha256, "label"] == row.label  # the people's label, corrected ones included
        assert by_sha.loc[row.sha256, "split"] != "test"
    assert len(merged.frame) == len(previous.frame) + len(reviews)
    old_test = previous.split("test").sort_values("sha256")
    new_test = merged.split("test").sort_values("sha256")
    assert old_test["sha256"].tolist() == new_test["sha256"].tolist()
    assert old_test["label"].tolist() == new_test["label"].tolist()


@pytest.mark.gpu
def test_prelabel_on_cuda_matches_cpu(tmp_path, balanced_bundle):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    write_images(tmp_path / "imgs", 8)
    sel = select(str(tmp_path / "imgs"), str(tmp_path / "sel"), budget=8, bundle_uri=balanced_bundle)
    cpu = prelabel(sel.uri, balanced_bundle, output=str(tmp_path / "cpu"))
    gpu = prelabel(sel.uri, balanced_bundle, output=str(tmp_path / "gpu"), device="cuda")
    np.testing.assert_allclose(
        gpu.frame["prelabel_probability"].astype(float),
        cpu.frame["prelabel_probability"].astype(float),
        atol=1e-4,
    )
