"""Where the loop demo's images come from: a data source gives the champion's labelled data, production traffic,
and a held-out slice of production that no step ever sees.

:class:`RealSource` reads two labelled folders with a ``manifest.csv`` (``file,label,...`` plus a source column):
the champion trains on one source of the first folder (``lfw_5590`` photos of faces-glasses); production is
another source of the second folder (``net_7876`` photos of faces-stream) at its natural glasses share. The
scripted reviewer answers by sha256 (:meth:`RealSource.label_of`): captured JPEGs are stored byte for byte.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from visionops.errors import DataError
from visionops.policy import POSITIVE_CLASS


@dataclass(frozen=True)
class Slice:
    """Labelled images (absolute paths) of one role in the demo."""

    paths: list[str]
    labels: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def share(self, label: str) -> float:
        return sum(lab == label for lab in self.labels) / max(1, len(self.labels))

    def write_labels_csv(self, path: Path) -> str:
        """``path,label`` CSV that ``visionops data ingest`` (and the pipeline's ingest step) reads."""
        import pandas as pd

        path.parent.mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"path": self.paths, "label": self.labels}).to_csv(path, index=False)
        return str(path)


@dataclass
class RealSource:
    """Two labelled folders: the champion's data and the production stream (see the module docstring)."""

    champion_dir: Path
    stream_dir: Path
    champion_subset: str = "lfw_5590"
    production_subset: str = "net_7876"
    subset_column: str = "mtfl_subset"
    positive: str = POSITIVE_CLASS
    #: images per role (None: all that the folder holds)
    champion_count: int | None = None
    traffic_count: int = 3000
    held_out_count: int = 1500
    seed: int = 0
    _labels: dict[str, str] = field(default_factory=dict, repr=False)

    def _rows(self, folder: Path, subset: str):
        import pandas as pd

        manifest = folder / "manifest.csv"
        if not manifest.is_file():
            raise DataError(f"{folder} has no manifest.csv (need file,label,{self.subset_column},sha256)")
        frame = pd.read_csv(manifest, dtype=str, keep_default_na=False)
        missing = {"file", "label", "sha256", self.subset_column} - set(frame.columns)
        if missing:
            raise DataError(f"{manifest} lacks columns {sorted(missing)}")
        for row in frame.itertuples():
            self._labels[row.sha256] = row.label
        rows = frame[frame[self.subset_column] == subset]
        if rows.empty:
            valid = sorted(set(frame[self.subset_column]))
            raise DataError(f"{manifest} has no rows of {self.subset_column}={subset!r}; valid: {valid}")
        return rows.sample(frac=1.0, random_state=self.seed).reset_index(drop=True)

    @staticmethod
    def _slice(folder: Path, rows) -> Slice:
        return Slice([str((folder / f).resolve()) for f in rows["file"]], list(rows["label"]))

    def champion(self) -> Slice:
        """The champion's labelled photos (one source of the champion folder, balanced as it is)."""
        rows = self._rows(self.champion_dir, self.champion_subset)
        return self._slice(self.champion_dir, rows.head(self.champion_count or len(rows)))

    def production(self) -> tuple[Slice, Slice]:
        """(traffic, held_out): disjoint random slices of the production source at its natural prevalence.

        The held-out slice is drawn first, stratified so its glasses share is the source's; it is never served,
        captured, reviewed, trained or gated on: it only measures champion and new model at the end.
        """
        rows = self._rows(self.stream_dir, self.production_subset)
        prevalence = float((rows["label"] == self.positive).mean())
        n_pos = round(self.held_out_count * prevalence)
        pos, neg = rows[rows["label"] == self.positive], rows[rows["label"] != self.positive]
        held = pos.head(n_pos).index.union(neg.head(self.held_out_count - n_pos).index)
        rest = rows.drop(index=held)
        held_out = rows.loc[held].sample(frac=1.0, random_state=self.seed + 1)
        return self._slice(self.stream_dir, rest.head(self.traffic_count)), self._slice(
            self.stream_dir, held_out
        )

    def production_prevalence(self) -> float:
        """The positive share of the production source (3.6% for net_7876)."""
        rows = self._rows(self.stream_dir, self.production_subset)
        return float((rows["label"] == self.positive).mean())

    def label_of(self, image: bytes) -> str | None:
        """The folder label of an image, by sha256 (the scripted reviewer's answer); None when unknown."""
        if not self._labels:
            self._rows(self.champion_dir, self.champion_subset)
            self._rows(self.stream_dir, self.production_subset)
        return self._labels.get(hashlib.sha256(image).hexdigest())


def held_out_metrics(bundle_uri: str, held_out: Slice, *, confidence: float = 0.95) -> dict:
    """Precision and recall of the positive class at the bundle's own threshold, with Wilson intervals."""
    import numpy as np

    from visionops.bundle import load_bundle
    from visionops.evaluation.metrics import proportion_interval
    from visionops.evaluation.run import predict

    bundle = load_bundle(bundle_uri)
    positive = bundle.meta.get("positive_class") or bundle.classes[0]
    threshold = float(bundle.meta["threshold"])
    probs = predict(bundle, held_out.paths, desc="held-out")[:, bundle.classes.index(positive)]
    said = probs >= threshold
    truth = np.array([lab == positive for lab in held_out.labels])
    tp, fp, fn = int((said & truth).sum()), int((said & ~truth).sum()), int((~said & truth).sum())
    precision = tp / (tp + fp) if tp + fp else None
    recall = tp / (tp + fn) if tp + fn else None
    return {
        "model_version": bundle.meta["model_version"],
        "threshold": threshold,
        "n": len(held_out),
        "positives": int(truth.sum()),
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "precision": precision,
        "precision_ci": list(proportion_interval(tp, tp + fp, confidence=confidence)),
        "recall": recall,
        "recall_ci": list(proportion_interval(tp, tp + fn, confidence=confidence)),
    }
