"""Validation of a dataset version: the checks that stop a bad dataset before anyone trains on it.

The report (``validation.json`` for machines, ``validation.md`` and a self-contained ``validation.html`` for
people) holds counts per class and split, the imbalance ratio, image sizes and simple pixel statistics per
class, duplicates and leakage across splits (by sha256 and by group), quarantined files, and slice coverage for
every metadata column: a slice where one label dominates beyond chance (the "the only red-haired workers all
wear glasses" trap) is flagged, because a model would learn the shortcut.

The checks are data: :data:`CHECKS` is a list of named :class:`Check` records, each a small function from the
gathered :class:`Facts` to the problems it finds, run in order by :func:`run_checks`. Hard failures are
configured by :class:`ValidationPolicy`; :meth:`ValidationReport.raise_for_failures` raises
:class:`~visionops.errors.ValidationFailed` with messages that say what to fix.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from visionops import reports, storage
from visionops.data.manifest import MANIFEST, QUARANTINE, SPLITS, load_dataset
from visionops.errors import ValidationFailed

log = logging.getLogger(__name__)

JSON_NAME, MD_NAME, HTML_NAME = "validation.json", "validation.md", "validation.html"


@dataclass
class ValidationPolicy:
    """Which checks fail the dataset (hard) and which only warn, and their thresholds."""

    min_images_per_class: int = 10
    fail_on_leakage: bool = True
    fail_on_conflicts: bool = True
    fail_on_dominated_slices: bool = False
    fail_on_missing_split_class: bool = False
    max_imbalance_ratio: float = 10.0  # warn above this (largest class / smallest class)
    max_quarantine_share: float = 0.05  # warn when more of the source files were refused
    dominance_share: float = 0.9  # a slice is dominated when one label has at least this share ...
    min_slice_images: int = 3  # ... on at least this many images ...
    slice_alpha: float = 0.05  # ... and chance explains it badly (one-sided binomial test p < alpha)
    max_slice_values: int = 50  # columns with more distinct values are identifiers, not slices
    label_columns: tuple[str, ...] = ("eyewear",)  # columns that describe the label itself (not checked)
    pixel_sample: int = 200  # images per class read for pixel statistics
    workers: int = 8


@dataclass
class ValidationReport:
    """The outcome: ``passed``, ``failures`` and ``warnings`` (messages that say what to fix), and the stats."""

    dataset_uri: str
    dataset_version: str
    golden_version: str
    passed: bool
    failures: list[str]
    warnings: list[str]
    checks: list[dict[str, str]]
    stats: dict[str, Any]
    policy: dict[str, Any]
    outputs: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def raise_for_failures(self) -> None:
        """Raise ValidationFailed listing every failed hard check (no-op when the dataset passed)."""
        if not self.passed:
            where = f" (report: {self.outputs['html']})" if "html" in self.outputs else ""
            raise ValidationFailed(
                f"dataset {self.dataset_uri} failed validation{where}:\n- " + "\n- ".join(self.failures)
            )


# -- statistics -----------------------------------------------------------------------------------------------
def _pixel_stats(img) -> dict[str, float]:
    import numpy as np

    img = img.copy()
    img.thumbnail((128, 128))
    rgb = np.asarray(img, dtype=np.float32) / 255.0
    grey = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    mx, mn = rgb.max(axis=2), rgb.min(axis=2)
    sat = np.where(mx > 0, (mx - mn) / np.maximum(mx, 1e-6), 0.0)
    return {
        "brightness": float(grey.mean()),
        "contrast": float(grey.std()),
        "saturation": float(sat.mean()),
        "red": float(rgb[..., 0].mean()),
        "green": float(rgb[..., 1].mean()),
        "blue": float(rgb[..., 2].mean()),
    }


def _sample_pixels(
    frame, policy: ValidationPolicy
) -> tuple[dict[str, dict[str, float]], dict[str, list], list]:
    """Pixel statistics per class on a seeded sample; also the per-image brightness and unreadable paths."""
    import numpy as np

    from visionops.errors import VisionOpsError
    from visionops.images import decode_image

    def one(path: str):
        try:
            return path, _pixel_stats(decode_image(storage.read_bytes(path)))
        except VisionOpsError as exc:
            return path, str(exc)

    per_class, brightness, unreadable = {}, {}, []
    for label, rows in sorted(frame.groupby("label")):
        paths = rows["path"].tolist()
        if len(paths) > policy.pixel_sample:
            idx = np.random.default_rng(0).choice(len(paths), policy.pixel_sample, replace=False)
            paths = [paths[i] for i in sorted(idx)]
        with ThreadPoolExecutor(max_workers=max(1, policy.workers)) as pool:
            results = list(pool.map(one, paths))
        stats = [s for _, s in results if isinstance(s, dict)]
        unreadable += [{"path": p, "reason": s} for p, s in results if not isinstance(s, dict)]
        if stats:
            per_class[str(label)] = {k: round(float(np.mean([s[k] for s in stats])), 4) for k in stats[0]}
            per_class[str(label)]["images_sampled"] = len(stats)
            brightness[str(label)] = [s["brightness"] for s in stats]
    return per_class, brightness, unreadable


def _sizes(frame) -> dict[str, dict[str, Any]]:
    out = {}
    for label, rows in sorted(frame.groupby("label")):
        entry: dict[str, Any] = {}
        for col in ("width", "height"):
            values = rows[col].astype(int)
            entry[col] = {
                "min": int(values.min()),
                "median": float(values.median()),
                "max": int(values.max()),
            }
        for col in ("mode", "format"):
            if col in rows.columns:
                entry[col] = {str(k): int(v) for k, v in rows[col].value_counts().items()}
        out[str(label)] = entry
    return out


def slice_coverage(frame, columns: list[str], policy: ValidationPolicy) -> tuple[list[dict], list[dict]]:
    """One row per (column, value) slice with label shares and a dominance flag; and notes on skipped columns.

    A slice is flagged when one label has ``>= dominance_share`` of it on ``>= min_slice_images`` images and a
    one-sided binomial test against that label's share of the whole dataset gives ``p < slice_alpha``.
    """
    from scipy.stats import binomtest

    base = frame["label"].value_counts(normalize=True).to_dict()
    rows, notes = [], []
    for col in columns:
        values = frame[col].astype(str)
        if col in policy.label_columns:
            notes.append(
                {"column": col, "note": "describes the label itself (policy.label_columns): not checked"}
            )
            continue
        distinct = values[values != ""].nunique()
        if distinct > policy.max_slice_values:
            notes.append({"column": col, "note": f"{distinct} distinct values: an identifier, not a slice"})
            continue
        col_rows = []
        for value, part in frame[values != ""].groupby(values[values != ""]):
            counts = part["label"].value_counts()
            n, top, k = len(part), str(counts.index[0]), int(counts.iloc[0])
            share = k / n
            p_value = (
                float(binomtest(k, n, base[top], alternative="greater").pvalue) if base[top] < 1 else 1.0
            )
            flagged = (
                n >= policy.min_slice_images
                and share >= policy.dominance_share
                and p_value < policy.slice_alpha
            )
            col_rows.append(
                {
                    "column": col,
                    "value": str(value),
                    "images": n,
                    "dominant_label": top,
                    "dominant_share": round(share, 4),
                    "p_value": round(p_value, 6),
                    "flagged": flagged,
                    "labels": {str(lab): int(c) for c, lab in zip(counts.values, counts.index, strict=True)},
                }
            )
        pure = (
            col_rows
            and all(r["dominant_share"] == 1.0 for r in col_rows)
            and len({r["dominant_label"] for r in col_rows}) > 1
        )
        if pure:
            notes.append(
                {
                    "column": col,
                    "note": "determines the label completely (a sub-label, or a source "
                    "that delivers one class only)",
                    "warn": True,
                }
            )
        rows += col_rows
    return rows, notes


# -- the facts the checks read ---------------------------------------------------------------------------------
def _leakage(frame) -> dict[str, Any]:
    by_sha = frame.groupby("sha256")
    multi = by_sha.filter(lambda g: len(g) > 1)
    sha_leaks, dup_same, conflicts = [], [], []
    for sha, g in multi.groupby("sha256"):
        labels, splits = sorted(set(g["label"])), sorted(set(g["split"]))
        entry = {"sha256": sha, "labels": labels, "splits": splits, "paths": g["path"].tolist()[:5]}
        if len(labels) > 1:
            conflicts.append(entry)
        if len(splits) > 1:
            sha_leaks.append(entry)
        elif len(labels) == 1:
            dup_same.append(entry)
    grouped = frame[frame["group"].astype(str) != ""]
    n_splits = grouped.groupby("group")["split"].nunique()
    group_leaks = [
        {"group": str(g), "splits": sorted(set(grouped[grouped["group"] == g]["split"]))}
        for g in n_splits[n_splits > 1].index
    ]
    return {
        "duplicates_same_split": dup_same,
        "sha256_across_splits": sha_leaks,
        "label_conflicts": conflicts,
        "groups_across_splits": group_leaks,
    }


def _read_quarantine(uri: str):
    import io

    import pandas as pd

    path = storage.join(uri, QUARANTINE)
    if not storage.exists(path):
        return pd.DataFrame(columns=["path", "reason"])
    return pd.read_csv(io.BytesIO(storage.read_bytes(path)), dtype=str, keep_default_na=False)


@dataclass
class Facts:
    """Everything the checks and the report read, gathered once from the dataset (and a pixel sample)."""

    frame: Any
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> images
    totals: dict[str, int]  # class -> images
    imbalance: float
    leak: dict[str, Any]
    quarantine: Any
    quarantine_share: float
    quarantine_reasons: Counter
    pixels: dict[str, dict[str, float]]
    brightness: dict[str, list]
    unreadable: list[dict]
    slices: list[dict]
    slice_notes: list[dict]


def gather_facts(dataset, uri: str, policy: ValidationPolicy) -> Facts:
    """Counts, leakage, quarantine, a pixel sample and slice coverage of ``dataset`` (read from ``uri``)."""
    frame = dataset.frame
    counts = {
        s: {
            str(k): int(v) for k, v in frame[frame["split"] == s]["label"].value_counts().sort_index().items()
        }
        for s in SPLITS
    }
    totals = {str(k): int(v) for k, v in frame["label"].value_counts().sort_index().items()}
    classes = sorted(set(dataset.classes) | set(totals))
    quarantine = _read_quarantine(uri)
    pixels, brightness, unreadable = _sample_pixels(frame, policy)
    slices, notes = slice_coverage(frame, dataset.metadata_columns, policy)
    return Facts(
        frame=frame,
        classes=classes,
        counts=counts,
        totals=totals,
        imbalance=max(totals.values()) / max(1, min(totals.get(c, 0) for c in classes)),
        leak=_leakage(frame),
        quarantine=quarantine,
        quarantine_share=len(quarantine) / max(1, len(quarantine) + len(frame)),
        quarantine_reasons=Counter(r.split(":", 1)[0].strip() for r in quarantine.get("reason", [])),
        pixels=pixels,
        brightness=brightness,
        unreadable=unreadable,
        slices=slices,
        slice_notes=notes,
    )


# -- the checks: each returns the problems it finds (messages that say what to fix) -------------------------------
def _too_few_images(f: Facts, policy: ValidationPolicy) -> list[str]:
    return [
        f"class {c!r} has {f.totals.get(c, 0)} images, fewer than the required {policy.min_images_per_class}: "
        f"add more {c!r} images (or lower --min-per-class)"
        for c in f.classes
        if f.totals.get(c, 0) < policy.min_images_per_class
    ]


def _classes_missing_from_splits(f: Facts, policy: ValidationPolicy) -> list[str]:
    missing = [
        f"class {c!r} has no images in the {s} split: add {c!r} images or change the split fractions"
        for s in SPLITS
        for c in f.classes
        if not f.counts[s].get(c) and len(f.frame[f.frame["split"] == s])
    ]
    return missing + [f"the {s} split is empty" for s in ("train", "test") if not f.counts[s]]


def _imbalance(f: Facts, policy: ValidationPolicy) -> list[str]:
    if f.imbalance <= policy.max_imbalance_ratio:
        return []
    return [
        f"class imbalance {f.imbalance:.1f}:1 (limit {policy.max_imbalance_ratio:g}): collect more images "
        f"of {min(f.totals, key=f.totals.get)!r} or weight the classes in training"
    ]


def _label_conflicts(f: Facts, policy: ValidationPolicy) -> list[str]:
    conflicts = f.leak["label_conflicts"]
    if not conflicts:
        return []
    return [
        f"{len(conflicts)} image(s) have identical bytes but different labels (e.g. "
        f"sha256 {conflicts[0]['sha256'][:12]} labelled "
        f"{' and '.join(conflicts[0]['labels'])}): fix the labels and re-ingest"
    ]


def _leakage_across_splits(f: Facts, policy: ValidationPolicy) -> list[str]:
    by_sha, by_group = f.leak["sha256_across_splits"], f.leak["groups_across_splits"]
    problems = []
    if by_sha:
        problems.append(
            f"{len(by_sha)} image(s) appear in more than one split by sha256 "
            f"(e.g. {by_sha[0]['sha256'][:12]} in {' and '.join(by_sha[0]['splits'])}): re-ingest with "
            "`visionops data ingest` (it keeps one copy) or remove the copies"
        )
    if by_group:
        problems.append(
            f"{len(by_group)} group(s) appear in more than one split (e.g. "
            f"{by_group[0]['group']!r} in {' and '.join(by_group[0]['splits'])}): the same person in train and "
            "test inflates the scores; re-ingest (splits are group-aware)"
        )
    return problems


def _duplicates(f: Facts, policy: ValidationPolicy) -> list[str]:
    if not f.leak["duplicates_same_split"]:
        return []
    return [
        f"{len(f.leak['duplicates_same_split'])} exact duplicate image(s) within a split: they over-weight "
        "those images; re-ingest to keep one copy"
    ]


def _quarantined(f: Facts, policy: ValidationPolicy) -> list[str]:
    if f.quarantine_share <= policy.max_quarantine_share:
        return []
    top = ", ".join(f"{r} x{n}" for r, n in f.quarantine_reasons.most_common(3))
    return [
        f"{len(f.quarantine)} source file(s) ({f.quarantine_share:.1%}) were quarantined (top reasons: "
        f"{top}): see quarantine.csv and fix or remove them at the source"
    ]


def _unreadable(f: Facts, policy: ValidationPolicy) -> list[str]:
    if not f.unreadable:
        return []
    first = f.unreadable[0]
    return [
        f"{len(f.unreadable)} manifest image(s) cannot be read or decoded (e.g. {first['path']}: "
        f"{first['reason']}): re-ingest the dataset"
    ]


def _dominated_slices(f: Facts, policy: ValidationPolicy) -> list[str]:
    problems = [
        f"slice {s['column']}={s['value']}: {s['labels'][s['dominant_label']]} of {s['images']} images are "
        f"{s['dominant_label']!r} ({s['dominant_share']:.0%}, p={s['p_value']:.2g}): a model may learn "
        f"'{s['column']}={s['value']} -> {s['dominant_label']}'. Collect {s['column']}={s['value']} images of the "
        "other class(es)"
        for s in f.slices
        if s["flagged"]
    ]
    return problems + [
        f"column {n['column']!r} {n['note']}: check that it is not a shortcut (or add it to label_columns)"
        for n in f.slice_notes
        if n.get("warn")
    ]


@dataclass(frozen=True)
class Check:
    """One named check: ``problems`` lists what it finds; ``hard`` says whether that fails the dataset.

    ``hard`` is True/False, or the name of the :class:`ValidationPolicy` flag that decides it.
    """

    name: str
    problems: Callable[[Facts, ValidationPolicy], list[str]]
    hard: bool | str

    def is_hard(self, policy: ValidationPolicy) -> bool:
        return self.hard if isinstance(self.hard, bool) else bool(getattr(policy, self.hard))


#: The checks, in report order.
CHECKS: tuple[Check, ...] = (
    Check("images per class", _too_few_images, hard=True),
    Check("classes in every split", _classes_missing_from_splits, hard="fail_on_missing_split_class"),
    Check("class balance", _imbalance, hard=False),
    Check("label conflicts", _label_conflicts, hard="fail_on_conflicts"),
    Check("leakage across splits", _leakage_across_splits, hard="fail_on_leakage"),
    Check("duplicates", _duplicates, hard=False),
    Check("quarantined files", _quarantined, hard=False),
    Check("images readable", _unreadable, hard=True),
    Check("slice coverage", _dominated_slices, hard="fail_on_dominated_slices"),
)


def run_checks(
    facts: Facts, policy: ValidationPolicy, checks: tuple[Check, ...] = CHECKS
) -> tuple[list[dict[str, str]], list[str], list[str]]:
    """Run ``checks`` in order: ``(check rows for the report, failures, warnings)``."""
    rows: list[dict[str, str]] = []
    failures: list[str] = []
    warnings: list[str] = []
    for check in checks:
        problems = check.problems(facts, policy)
        hard = check.is_hard(policy)
        status = "pass" if not problems else ("fail" if hard else "warn")
        rows.append(
            {"check": check.name, "status": status, "detail": "; ".join(problems) if problems else "ok"}
        )
        (failures if hard else warnings).extend(problems)
    return rows, failures, warnings


def _stats(f: Facts, metadata_columns: list[str]) -> dict[str, Any]:
    """The report's statistics section."""
    return {
        "images": len(f.frame),
        "classes": f.classes,
        "counts": f.counts,
        "totals": f.totals,
        "imbalance_ratio": round(f.imbalance, 3),
        "imbalance_by_split": {
            s: round(max(c.values()) / max(1, min(c.get(k, 0) for k in f.classes)), 3)
            for s, c in f.counts.items()
            if c
        },
        "sizes": _sizes(f.frame),
        "pixels": f.pixels,
        "leakage": f.leak,
        "unreadable": f.unreadable[:20],
        "quarantine": {
            "files": len(f.quarantine),
            "share": round(f.quarantine_share, 4),
            "reasons": dict(f.quarantine_reasons),
            "examples": f.quarantine.head(20).to_dict("records"),
        },
        "slices": f.slices,
        "slice_notes": f.slice_notes,
        "metadata_columns": metadata_columns,
    }


def _dataset_root(dataset_uri: str) -> str:
    """The dataset directory for a URI that names it or its manifest.csv."""
    uri = str(dataset_uri)
    if uri.endswith("/" + MANIFEST) or uri == MANIFEST:
        uri = uri[: -len(MANIFEST)].rstrip("/") or "."
    return uri


def validate(
    dataset_uri: str, output: str | None = None, *, policy: ValidationPolicy = ValidationPolicy()
) -> ValidationReport:
    """Validate the dataset at ``dataset_uri`` (its directory or its manifest.csv) against ``policy``.

    With ``output`` (local or ``s3://``) writes validation.md, validation.html and validation.json (last).
    Never raises for a failed check: look at ``report.passed`` or call ``report.raise_for_failures()``.
    """
    uri = _dataset_root(dataset_uri)
    dataset = load_dataset(uri)
    facts = gather_facts(dataset, uri, policy)
    checks, failures, warnings = run_checks(facts, policy)
    report = ValidationReport(
        dataset_uri=uri,
        dataset_version=dataset.version,
        golden_version=dataset.golden_version,
        passed=not failures,
        failures=failures,
        warnings=warnings,
        checks=checks,
        stats=_stats(facts, dataset.metadata_columns),
        policy={k: list(v) if isinstance(v, tuple) else v for k, v in asdict(policy).items()},
    )
    if output:
        report.outputs = write_report(report, facts.brightness, str(output))
    log.info(
        "validation of %s: %s (%d failures, %d warnings)",
        uri,
        "passed" if report.passed else "FAILED",
        len(failures),
        len(warnings),
    )
    return report


# -- rendering ----------------------------------------------------------------------------------------------
def _plots(report: ValidationReport, brightness: dict[str, list]) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    counts = report.stats["counts"]
    classes = report.stats["classes"]
    fig, ax = plt.subplots(figsize=(6, 3))
    width = 0.8 / max(1, len(classes))
    for k, cls in enumerate(classes):
        ax.bar(
            [i + k * width for i in range(len(SPLITS))],
            [counts[s].get(cls, 0) for s in SPLITS],
            width,
            label=cls,
        )
    ax.set_xticks([i + width * (len(classes) - 1) / 2 for i in range(len(SPLITS))], SPLITS)
    ax.set_ylabel("images")
    ax.set_title("Images per split and class")
    ax.legend()
    out.append(("Split balance (chart)", reports.figure_data_uri(fig)))
    if brightness:
        fig, ax = plt.subplots(figsize=(6, 3))
        for cls, values in sorted(brightness.items()):
            ax.hist(values, bins=20, range=(0, 1), alpha=0.55, label=cls)
        ax.set_xlabel("mean brightness (0-1)")
        ax.set_ylabel("images")
        ax.set_title("Brightness per class (sample)")
        ax.legend()
        out.append(("Brightness per class", reports.figure_data_uri(fig)))
    flagged = [s for s in report.stats["slices"] if s["flagged"]]
    if flagged:
        fig, ax = plt.subplots(figsize=(6, 0.5 + 0.4 * len(flagged[:15])))
        names = [f"{s['column']}={s['value']} (n={s['images']})" for s in flagged[:15]]
        ax.barh(names, [s["dominant_share"] for s in flagged[:15]], color="#c62828")
        ax.set_xlim(0, 1)
        ax.set_xlabel("share of the dominant label")
        ax.set_title("Flagged slices")
        out.append(("Flagged slices", reports.figure_data_uri(fig)))
    return out


def _tables(report: ValidationReport) -> dict[str, list[dict]]:
    st = report.stats
    counts = [
        {
            "split": s,
            **{c: st["counts"][s].get(c, 0) for c in st["classes"]},
            "total": sum(st["counts"][s].values()),
        }
        for s in SPLITS
    ]
    sizes = [
        {
            "class": c,
            "width (min/median/max)": "/".join(str(v) for v in e["width"].values()),
            "height (min/median/max)": "/".join(str(v) for v in e["height"].values()),
            "modes": ", ".join(f"{k} {v}" for k, v in e.get("mode", {}).items()),
        }
        for c, e in st["sizes"].items()
    ]
    pixels = [{"class": c, **v} for c, v in st["pixels"].items()]
    leak = st["leakage"]
    leakage = [{"kind": k.replace("_", " "), "count": len(v)} for k, v in leak.items()]
    slices = sorted(st["slices"], key=lambda s: (not s["flagged"], s["column"], s["value"]))
    slice_rows = [
        {
            "column": s["column"],
            "value": s["value"],
            "images": s["images"],
            "labels": ", ".join(f"{k} {v}" for k, v in s["labels"].items()),
            "dominant share": s["dominant_share"],
            "p": s["p_value"],
            "flag": "fail" if s["flagged"] else "",
        }
        for s in slices
    ]
    return {
        "counts": counts,
        "sizes": sizes,
        "pixels": pixels,
        "leakage": leakage,
        "slices": slice_rows,
        "checks": report.checks,
        "notes": st["slice_notes"],
        "quarantine": st["quarantine"]["examples"],
    }


def render_markdown(report: ValidationReport) -> str:
    t = _tables(report)
    st = report.stats
    verdict = "PASSED" if report.passed else "FAILED"
    lines = [
        f"# Dataset validation: {verdict}",
        "",
        f"Dataset `{report.dataset_uri}` version `{report.dataset_version}`, golden set "
        f"`{report.golden_version}`; {st['images']} images, imbalance {st['imbalance_ratio']:g}:1.",
        "",
    ]
    for title, items in (("Failures (must fix)", report.failures), ("Warnings", report.warnings)):
        if items:
            lines += [f"## {title}", "", *[f"- {m}" for m in items], ""]
    lines += [
        "## Checks",
        "",
        reports.markdown_table(t["checks"]),
        "## Images per split and class",
        "",
        reports.markdown_table(t["counts"]),
        "## Image sizes per class",
        "",
        reports.markdown_table(t["sizes"]),
        "## Pixel statistics per class (sample, 0-1)",
        "",
        reports.markdown_table(t["pixels"]),
        "## Duplicates and leakage",
        "",
        reports.markdown_table(t["leakage"]),
        f"## Quarantined files ({st['quarantine']['files']})",
        "",
        reports.markdown_table(t["quarantine"]),
        "## Slice coverage",
        "",
        reports.markdown_table(t["slices"][:300]),
    ]
    if t["notes"]:
        lines += [
            "Columns not checked or worth a look:",
            "",
            *[f"- `{n['column']}`: {n['note']}" for n in t["notes"]],
            "",
        ]
    return "\n".join(lines)


def render_html(report: ValidationReport, brightness: dict[str, list]) -> str:
    t = _tables(report)
    st = report.stats
    verdict = '<p class="pass">PASSED</p>' if report.passed else '<p class="fail">FAILED</p>'
    summary = verdict + (
        f'<div class="card">{st["images"]} images, classes {reports.escape(", ".join(map(str, st["classes"])))}, imbalance '
        f"{st['imbalance_ratio']:g}:1<br>dataset <code>{reports.escape(report.dataset_version)}</code>, golden set "
        f"<code>{reports.escape(report.golden_version)}</code></div>"
    )
    sections = [("", summary)]
    if report.failures:
        sections.append(
            (
                "Failures (must fix)",
                "<ul>"
                + "".join(f'<li class="fail">{reports.escape(m)}</li>' for m in report.failures)
                + "</ul>",
            )
        )
    if report.warnings:
        sections.append(
            (
                "Warnings",
                "<ul>"
                + "".join(f'<li class="warn">{reports.escape(m)}</li>' for m in report.warnings)
                + "</ul>",
            )
        )
    sections.append(
        ("Checks", reports.html_table(t["checks"], classes={"pass": "pass", "fail": "fail", "warn": "warn"}))
    )
    sections.append(("Images per split and class", reports.html_table(t["counts"])))
    for title, uri in _plots(report, brightness):
        sections.append((title, f'<img alt="{reports.escape(title)}" src="{uri}">'))
    sections += [
        ("Image sizes per class", reports.html_table(t["sizes"])),
        ("Pixel statistics per class (sample, 0-1)", reports.html_table(t["pixels"])),
        ("Duplicates and leakage", reports.html_table(t["leakage"])),
        (f"Quarantined files ({st['quarantine']['files']})", reports.html_table(t["quarantine"])),
        (
            "Slice coverage",
            reports.html_table(t["slices"][:300], classes={"fail": "fail"})
            + "".join(
                f"<p><code>{reports.escape(n['column'])}</code>: {reports.escape(n['note'])}</p>"
                for n in t["notes"]
            ),
        ),
    ]
    return reports.html_page("Dataset validation", sections, subtitle=str(report.dataset_uri))


def write_report(report: ValidationReport, brightness: dict[str, list], output: str) -> dict[str, str]:
    """Write validation.md, validation.html and validation.json (last) to ``output``; returns their URIs."""
    outputs = {
        "markdown": storage.join(output, MD_NAME),
        "html": storage.join(output, HTML_NAME),
        "json": storage.join(output, JSON_NAME),
    }
    report.outputs = outputs
    texts = [
        (outputs["markdown"], render_markdown(report)),
        (outputs["html"], render_html(report, brightness)),
        (outputs["json"], json.dumps(report.to_dict(), indent=2, default=str)),
    ]
    for uri, text in texts:
        if storage.is_remote(uri):
            storage.write_text(uri, text)
        else:
            reports.write_text_atomic(Path(uri), text)
    return outputs
