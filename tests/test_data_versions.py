"""Data versions that never leak: a merge keeps every row's split, and a golden extension takes only new,
never-trained-on rows, at the production prevalence, through `visionops label merge ... --extend-golden N`."""

from __future__ import annotations

import pandas as pd
import pytest
from visionops.data.ingest import ingest
from visionops.data.manifest import load_dataset
from visionops.labeling import merge_batch

from tests.test_labeling import write_images


@pytest.fixture()
def versions(tmp_path):
    """A first version of 80 images (40 per class) and a reviewed batch: 60 new images (12 glasses) and
    two corrections of earlier training/validation images."""
    rows = []
    for k, cls in enumerate(("glasses", "no_glasses")):
        for path in write_images(tmp_path / "base" / cls, 40, first_seed=1000 + 100 * k):
            rows.append({"path": str(path), "label": cls})
    pd.DataFrame(rows).to_csv(tmp_path / "base.csv", index=False)
    v1 = ingest(str(tmp_path / "base.csv"), str(tmp_path / "v1"), seed=0, progress=False)
    new = write_images(tmp_path / "new", 60, first_seed=5000)
    batch = [{"path": str(p), "label": "glasses" if i < 12 else "no_glasses"} for i, p in enumerate(new)]
    earlier = v1.frame[v1.frame["split"] != "test"].head(2)
    flipped = {"glasses": "no_glasses", "no_glasses": "glasses"}
    batch += [{"path": r.path, "label": flipped[r.label]} for r in earlier.itertuples()]
    pd.DataFrame(batch).assign(group="").to_csv(tmp_path / "batch.csv", index=False)
    return v1, str(tmp_path / "batch.csv")


def test_a_merge_never_moves_a_row_between_splits(versions, tmp_path):
    v1, batch = versions
    v2 = merge_batch(v1.uri, batch, str(tmp_path / "v2"), seed=7)  # another seed: splits must not move
    before = v1.frame.set_index("sha256")["split"]
    after = v2.frame.set_index("sha256")["split"]
    assert len(v2.frame) == len(v1.frame) + 60
    assert (after.loc[before.index] == before).all()  # every earlier row kept its split
    new = after.drop(before.index)
    assert set(new) <= {"train", "val"} and (new == "val").any()  # new rows only fill train/val
    assert v2.golden_version == v1.golden_version
    # and again: a third version keeps the second's splits
    v3 = merge_batch(v2.uri, batch, str(tmp_path / "v3"), seed=11)
    assert (v3.frame.set_index("sha256")["split"].loc[after.index] == after).all()


def test_golden_extension_takes_only_new_rows_at_the_production_prevalence(versions, tmp_path):
    from typer.testing import CliRunner
    from visionops.cli import app

    v1, batch = versions
    out = tmp_path / "v2"
    args = [
        "label",
        "merge",
        v1.uri,
        batch,
        str(out),
        "--extend-golden",
        "20",
        "--positive-prevalence",
        "0.1",
    ]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    v2 = load_dataset(str(out))
    assert v2.golden_version != v1.golden_version
    old_golden = set(v1.split("test")["sha256"])
    added = v2.split("test")[~v2.split("test")["sha256"].isin(old_golden)]
    assert len(added) == 20 and (added["label"] == "glasses").sum() == 2  # 10% of 20
    # no image of the extension was in any split of the previous version (never trained on by its models)
    assert not set(added["sha256"]) & set(v1.frame["sha256"])
    # the earlier golden set is still all there, and no earlier train/val row moved
    assert old_golden <= set(v2.split("test")["sha256"])
    before = v1.frame.set_index("sha256")["split"]
    assert (v2.frame.set_index("sha256")["split"].loc[before.index] == before).all()


def test_golden_extension_refuses_more_than_the_batch_holds(versions, tmp_path):
    from visionops.errors import DataError

    v1, batch = versions
    with pytest.raises(DataError, match="cannot add 50 'glasses' images to the golden set: only 12 new"):
        merge_batch(v1.uri, batch, str(tmp_path / "v2"), extend_golden=100, prevalence=0.5)
