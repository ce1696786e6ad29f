"""Read reviewed labels back, validate them, measure the model against them, and write a labeled batch.

Input: a Label Studio export (JSON: tasks with ``annotations[].result[].value.choices``; the flat JSON-MIN
export works too) or the review CSV (``request_id,...,label``), plus the selection they were made from.

Validation refuses the whole import, listing every offending item, when an answer
* names a label that is not one of the model's classes,
* refers to an image that is not in the selection, or whose file is gone,
* conflicts with another answer for the same image (annotators disagreeing, or duplicate tasks), or picks
  several choices at once.
Items nobody answered (or cancelled/skipped annotations) are simply not in the batch; they are counted.

Output directory::

    batch.csv          path,label,group,label_source=review,request_id,prelabel,prelabel_model: what
                       `data ingest` merges (see visionops.labeling.merge); ``source`` is not used as a
                       column name because ingestion reserves it for the original URI
    reviews.csv        every reviewed item with its sha256, the pre-label, the answer and the annotators
    feedback.jsonl     {"request_id", "label", "time", "source": "review"} per reviewed item: ground truth
                       for `visionops experiment analyze --feedback` and the monitor's /feedback
    agreement.json     the model's pre-labels against the people's answers: accuracy, precision and recall of
                       the positive class with 95% Wilson intervals, confusion matrix; on all reviewed items,
                       on the random share (the unbiased live-quality estimate) and on the uncertain share
    agreement.md/.html the same for people (with the corrected images shown)
    import.json        marker, written last
"""

from __future__ import annotations

import json
import logging
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from visionops import reports, storage
from visionops.errors import ConfigError, DataError
from visionops.labeling.artifact import Selection, csv_bytes, load_selection, parallel_map, read_csv
from visionops.labeling.export import FROM_NAME
from visionops.labeling.select import REASON_RANDOM, REASON_UNCERTAIN
from visionops.policy import TARGET_PRECISION, default_positive_class

log = logging.getLogger(__name__)

FORMATS = ("label-studio", "csv")
MARKER = "import.json"
BATCH_CSV = "batch.csv"
REVIEWS_CSV = "reviews.csv"
FEEDBACK_JSONL = "feedback.jsonl"
BATCH_COLUMNS = ("path", "label", "group", "label_source", "request_id", "prelabel", "prelabel_model")
_MAX_LISTED = 20
_MAX_GALLERY = 24


@dataclass(frozen=True)
class Answer:
    """One person's answer for one review item."""

    where: str  # e.g. "task 3, annotation 12" (for error messages)
    request_id: str
    sha256: str
    labels: tuple[str, ...]
    annotator: str


@dataclass
class ImportResult:
    """What :func:`import_reviews` wrote and measured."""

    output: str
    batch_uri: str
    report: dict[str, Any]

    @property
    def reviewed(self) -> int:
        return self.report["counts"]["reviewed"]

    @property
    def changed(self) -> int:
        return self.report["counts"]["changed"]

    @property
    def agreement(self) -> dict[str, Any]:
        return self.report["agreement"]


# -- statistics ------------------------------------------------------------------------------------------------
def wilson_interval(successes: int, n: int) -> tuple[float, float] | None:
    """The 95% Wilson score interval of a proportion (the evaluation's implementation); None when ``n`` is 0."""
    from visionops.evaluation.metrics import proportion_interval

    return proportion_interval(successes, n) if n > 0 else None


def _proportion(k: int, n: int) -> dict[str, Any]:
    interval = wilson_interval(k, n)
    return {
        "value": k / n if n else None,
        "low": interval[0] if interval else None,
        "high": interval[1] if interval else None,
        "successes": k,
        "n": n,
    }


def agreement(predicted: list[str], human: list[str], *, positive: str, classes: list[str]) -> dict[str, Any]:
    """The model's labels scored against the people's: accuracy, positive-class precision/recall, confusion."""
    n = len(predicted)
    tp = sum(p == positive and h == positive for p, h in zip(predicted, human, strict=True))
    fp = sum(p == positive and h != positive for p, h in zip(predicted, human, strict=True))
    fn = sum(p != positive and h == positive for p, h in zip(predicted, human, strict=True))
    same = sum(p == h for p, h in zip(predicted, human, strict=True))
    confusion = {h: {p: 0 for p in classes} for h in classes}  # confusion[human][predicted]
    for p, h in zip(predicted, human, strict=True):
        confusion[h][p] += 1
    return {
        "n": n,
        "changed": n - same,
        "accuracy": _proportion(same, n),
        "precision": _proportion(tp, tp + fp),
        "recall": _proportion(tp, tp + fn),
        "confusion": confusion,
    }


# -- parsing ------------------------------------------------------------------------------------------------------
def _annotator(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("email") or value.get("id") or "")
    return "" if value is None else str(value)


def _choices_of(result: list[Any]) -> tuple[str, ...] | None:
    """The choices picked in one annotation's result (our control first); None when it holds none."""
    picked: list[str] = []
    ours = [
        r
        for r in result
        if isinstance(r, dict) and r.get("type") == "choices" and r.get("from_name") == FROM_NAME
    ]
    items = ours or [r for r in result if isinstance(r, dict) and r.get("type") == "choices"]
    for item in items:
        picked.extend(str(c) for c in (item.get("value") or {}).get("choices") or [])
    return tuple(picked) if picked else None


def parse_label_studio(data: Any, where: str) -> tuple[list[Answer], int]:
    """Answers from a Label Studio export (JSON or JSON-MIN); also the number of tasks read."""
    if not isinstance(data, list):
        raise DataError(f"{where} is not a Label Studio export: expected a JSON list of tasks")
    answers: list[Answer] = []
    for i, task in enumerate(data):
        if not isinstance(task, dict):
            raise DataError(f"{where}: task {i} is not a JSON object")
        if "annotations" in task or "data" in task:
            fields = task.get("data") or {}
            rid, sha = str(fields.get("request_id") or ""), str(fields.get("sha256") or "")
            for ann in task.get("annotations") or []:
                if ann.get("was_cancelled"):
                    continue
                labels = _choices_of(ann.get("result") or [])
                if labels is not None:
                    place = f"task {task.get('id', i)}, annotation {ann.get('id', '?')}"
                    answers.append(Answer(place, rid, sha, labels, _annotator(ann.get("completed_by"))))
        else:  # JSON-MIN: flat rows, the control's name is the key
            value = task.get(FROM_NAME)
            if isinstance(value, dict):
                value = value.get("choices")
            labels = (
                tuple(str(v) for v in value) if isinstance(value, list) else (str(value),) if value else None
            )
            if labels:
                answers.append(
                    Answer(
                        f"task {task.get('id', i)}",
                        str(task.get("request_id") or ""),
                        str(task.get("sha256") or ""),
                        labels,
                        _annotator(task.get("annotator")),
                    )
                )
    return answers, len(data)


def parse_csv(uri: str) -> tuple[list[Answer], int]:
    """Answers from the review CSV (rows with an empty ``label`` are unreviewed)."""
    frame = reports.restore_frame(read_csv(uri))  # the export neutralised formula-like cells
    missing = [c for c in ("request_id", "label") if c not in frame.columns]
    if missing:
        raise DataError(f"review CSV {uri} lacks columns {missing}; it needs request_id and label")
    answers = []
    for i, row in enumerate(frame.to_dict("records")):
        label = str(row["label"]).strip()
        if label:
            answers.append(
                Answer(
                    f"row {i + 2}",
                    row["request_id"],
                    row.get("sha256", ""),
                    (label,),
                    row.get("annotator", ""),
                )
            )
    return answers, len(frame)


# -- validation ---------------------------------------------------------------------------------------------------
def _listing(title: str, items: list[str]) -> str:
    shown = [f"  - {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        shown.append(f"  ... and {len(items) - _MAX_LISTED} more")
    return f"{title} ({len(items)}):\n" + "\n".join(shown)


def _resolve(answers: list[Answer], selection: Selection, *, check_images: bool) -> dict[str, list[Answer]]:
    """Group answers by request id; raise one DataError that lists every problem."""
    rows = {r["request_id"]: r for r in selection.frame.to_dict("records")}
    by_sha = {r["sha256"]: rid for rid, r in rows.items()}
    classes = selection.classes
    problems: list[str] = []
    unknown_items, unknown_labels, multiple = [], [], []
    grouped: dict[str, list[Answer]] = defaultdict(list)
    for ans in answers:
        rid = ans.request_id if ans.request_id in rows else by_sha.get(ans.sha256, "")
        if not rid:
            unknown_items.append(
                f"{ans.where}: request_id={ans.request_id or '?'} sha256={ans.sha256[:12] or '?'}"
            )
            continue
        if len(ans.labels) > 1:
            multiple.append(f"{ans.where} ({rid}): {', '.join(ans.labels)}")
        bad = [lab for lab in ans.labels if lab not in classes]
        if bad:
            unknown_labels.append(f"{ans.where} ({rid}): {', '.join(map(repr, bad))}")
        grouped[rid].append(ans)
    conflicts = []
    for rid, group in grouped.items():
        labels = sorted({lab for a in group for lab in a.labels})
        if len(labels) > 1 and not any(len(a.labels) > 1 for a in group):
            who = "; ".join(f"{a.labels[0]} by {a.annotator or a.where}" for a in group)
            conflicts.append(f"{rid} ({rows[rid]['image']}): {who}")
    missing_images = []
    if check_images and grouped:
        present = parallel_map(lambda rid: storage.exists(rows[rid]["image"]), list(grouped))
        missing_images = [
            f"{rid}: {rows[rid]['image']}" for rid, ok in zip(grouped, present, strict=True) if not ok
        ]
    if unknown_labels:
        problems.append(_listing(f"unknown labels (valid: {', '.join(classes)})", unknown_labels))
    if unknown_items:
        problems.append(
            _listing(f"answers for images that are not in the selection {selection.uri}", unknown_items)
        )
    if missing_images:
        problems.append(_listing("answers for images whose file is missing", missing_images))
    if multiple:
        problems.append(_listing("answers with several labels for one image (pick one)", multiple))
    if conflicts:
        problems.append(
            _listing(
                "conflicting answers for the same image (settle them in the tool, then export again)",
                conflicts,
            )
        )
    if problems:
        raise DataError("reviewed labels refused:\n" + "\n".join(problems))
    return grouped


# -- reports ------------------------------------------------------------------------------------------------------
def _interval_text(stat: dict[str, Any]) -> str:
    if stat["value"] is None:
        return "n/a (no items)"
    return f"{stat['value']:.3f} [{stat['low']:.3f}, {stat['high']:.3f}] ({stat['successes']}/{stat['n']})"


def _summary_rows(report: dict[str, Any]) -> list[dict[str, Any]]:
    rows = []
    for subset, stats in report["agreement"].items():
        rows.append(
            {
                "items": subset,
                "n": stats["n"],
                "changed by review": stats["changed"],
                "accuracy": _interval_text(stats["accuracy"]),
                f"precision ({report['positive_class']})": _interval_text(stats["precision"]),
                f"recall ({report['positive_class']})": _interval_text(stats["recall"]),
            }
        )
    return rows


def _confusion_rows(stats: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"human \\ model": h, **row} for h, row in stats["confusion"].items()]


def _thumbnail(uri: str) -> str | None:
    from visionops.images import DEFAULT_LIMITS, decode_image, encode_image

    try:
        img = decode_image(storage.read_limited(uri, DEFAULT_LIMITS.max_bytes), target_side=112)
    except Exception:  # a report never fails because one thumbnail cannot be made
        return None
    img.thumbnail((112, 112))
    return reports.image_data_uri(encode_image(img, quality=80))


def _notes(report: dict[str, Any]) -> list[str]:
    live = report["agreement"].get(REASON_RANDOM)
    notes = [
        "The random share is a uniform sample of production: its figures estimate the model's live quality. "
        "The uncertain share was chosen near the threshold, so its figures are pessimistic by design.",
    ]
    if live and live["precision"]["value"] is not None:
        status = report["live_precision_status"]
        notes.append(
            f"Live precision of {report['positive_class']!r} (random share): {_interval_text(live['precision'])}; "
            f"target {report['target_precision']}: {status}."
        )
    return notes


def render_markdown(report: dict[str, Any]) -> str:
    lines = [
        f"# Review import: model {report['model_version']} against human labels",
        "",
        f"Selection `{report['selection']}`, export `{report['export']}` ({report['format']}).",
        "",
        reports.markdown_table([report["counts"]]),
        "## Agreement (95% Wilson intervals)",
        "",
        reports.markdown_table(_summary_rows(report)),
        *[f"- {n}" for n in _notes(report)],
        "",
        "## Confusion (all reviewed items)",
        "",
        reports.markdown_table(_confusion_rows(report["agreement"]["all"])),
        "## Corrections",
        "",
        reports.markdown_table(report["corrections"], ["request_id", "image", "prelabel", "label", "reason"]),
    ]
    return "\n".join(lines)


def render_html(report: dict[str, Any]) -> str:
    gallery = []
    for item in report["corrections"][:_MAX_GALLERY]:
        src = _thumbnail(item["image"])
        img = f'<img src="{src}" alt="">' if src else '<span class="muted">(no preview)</span>'
        gallery.append(
            f'<div class="card" style="display:inline-block;width:130px;vertical-align:top">{img}<br>'
            f"<small>{reports.escape(item['request_id'])}<br>model: {reports.escape(item['prelabel'])}<br>"
            f"<b>human: {reports.escape(item['label'])}</b></small></div>"
        )
    more = len(report["corrections"]) - _MAX_GALLERY
    if more > 0:
        gallery.append(f'<p class="muted">... and {more} more (see reviews.csv)</p>')
    sections = [
        ("Counts", reports.html_table([report["counts"]])),
        (
            "Agreement (95% Wilson intervals)",
            reports.html_table(_summary_rows(report))
            + "".join(f"<p>{reports.escape(n)}</p>" for n in _notes(report)),
        ),
        ("Confusion (all reviewed items)", reports.html_table(_confusion_rows(report["agreement"]["all"]))),
        ("Images the reviewers corrected", "".join(gallery) or '<p class="muted">(none)</p>'),
    ]
    return reports.html_page(
        f"Review import: model {report['model_version']} against human labels",
        sections,
        subtitle=f"selection {report['selection']} · export {report['export']} · {report['created']}",
    )


# -- the import ---------------------------------------------------------------------------------------------------
def _check_format(format: str) -> None:
    """Refuse an export format this importer cannot read, naming the valid ones."""
    if format not in FORMATS:
        raise ConfigError(f"unknown review format {format!r}; valid: {', '.join(FORMATS)}")


def read_answers(export_uri: str, format: str) -> tuple[list[Answer], int]:
    """The answers in an export of ``format`` (label-studio JSON or the review CSV); also the tasks read."""
    _check_format(format)
    if format == "csv":
        return parse_csv(export_uri)
    try:
        data = json.loads(storage.read_text(export_uri))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{export_uri} is not valid JSON ({exc}); export the project as JSON") from exc
    return parse_label_studio(data, export_uri)


def _reviewed_items(selection: Selection, grouped: dict[str, list[Answer]]) -> list[dict[str, Any]]:
    """One row per selected image that people answered, in selection order: the pre-label and the answer."""
    reviewed = []
    for row in selection.frame.to_dict("records"):
        group = grouped.get(row["request_id"])
        if not group:
            continue
        annotators = sorted({a.annotator for a in group if a.annotator})
        reviewed.append(
            {
                "request_id": row["request_id"],
                "image": row["image"],
                "sha256": row["sha256"],
                "reason": row.get("reason", ""),
                "prelabel": row["predicted_label"],
                "confidence": row.get("confidence", ""),
                "label": group[0].labels[0],
                "agreed": row["predicted_label"] == group[0].labels[0],
                "answers": len(group),
                "annotators": ";".join(annotators),
                "prelabel_model": row.get("prelabel_model", ""),
            }
        )
    return reviewed


def agreement_by_share(
    reviewed: list[dict[str, Any]], *, positive: str, classes: list[str]
) -> dict[str, dict[str, Any]]:
    """:func:`agreement` on all reviewed items and on each selection share (random, uncertain) present."""
    subsets = {"all": reviewed}
    for reason in (REASON_RANDOM, REASON_UNCERTAIN):
        part = [r for r in reviewed if r["reason"] == reason]
        if part:
            subsets[reason] = part
    return {
        name: agreement(
            [r["prelabel"] for r in part], [r["label"] for r in part], positive=positive, classes=classes
        )
        for name, part in subsets.items()
    }


def live_precision_status(stats: dict[str, dict[str, Any]], target_precision: float) -> str:
    """Where the random share's precision interval lies against the target (only that share is unbiased)."""
    live = stats.get(REASON_RANDOM, {}).get("precision")
    if not live or live["value"] is None:
        return "unknown (no random-share items predicted positive)"
    if live["low"] >= target_precision:
        return "meets the target"
    if live["high"] < target_precision:
        return "BELOW the target"
    return "not distinguishable from the target yet (review more)"


def _import_report(
    selection: Selection,
    reviewed: list[dict[str, Any]],
    stats: dict[str, dict[str, Any]],
    *,
    export_uri: str,
    format: str,
    positive: str,
    target_precision: float,
    n_answers: int,
    n_tasks: int,
) -> dict[str, Any]:
    """The agreement.json content: provenance, counts, agreement per share and the corrections."""
    return {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "selection": selection.uri,
        "export": str(export_uri),
        "format": format,
        "model_version": (selection.meta.get("prelabel") or {}).get("model_version"),
        "classes": selection.classes,
        "positive_class": positive,
        "target_precision": target_precision,
        "live_precision_status": live_precision_status(stats, target_precision),
        "counts": {
            "selected": len(selection.frame),
            "tasks": n_tasks,
            "answers": n_answers,
            "reviewed": len(reviewed),
            "unreviewed": len(selection.frame) - len(reviewed),
            "changed": sum(not r["agreed"] for r in reviewed),
        },
        "agreement": stats,
        "corrections": [
            {k: r[k] for k in ("request_id", "image", "prelabel", "label", "reason")}
            for r in reviewed
            if not r["agreed"]
        ],
    }


def _batch_frame(reviewed: list[dict[str, Any]]):
    """The labeled batch that `data ingest` merges: one row per reviewed image, labelled by people."""
    import pandas as pd

    rows = [
        {
            "path": r["image"],
            "label": r["label"],
            "group": "",
            "label_source": "review",
            "request_id": r["request_id"],
            "prelabel": r["prelabel"],
            "prelabel_model": r["prelabel_model"],
        }
        for r in reviewed
    ]
    return pd.DataFrame(rows, columns=list(BATCH_COLUMNS))


def _feedback_lines(reviewed: list[dict[str, Any]], created: str) -> str:
    """feedback.jsonl: each reviewed label as ground truth for the monitor and the experiment analysis."""
    return "".join(
        json.dumps({"request_id": r["request_id"], "label": r["label"], "time": created, "source": "review"})
        + "\n"
        for r in reviewed
    )


def _publish(reviewed: list[dict[str, Any]], report: dict[str, Any], output: str) -> None:
    """Write the batch, the reviews, the feedback and the agreement reports; the marker goes last."""
    import pandas as pd

    with tempfile.TemporaryDirectory(prefix="visionops-import-") as tmp:
        root = Path(tmp)
        (root / BATCH_CSV).write_bytes(csv_bytes(_batch_frame(reviewed)))
        (root / REVIEWS_CSV).write_bytes(csv_bytes(pd.DataFrame(reviewed)))
        (root / FEEDBACK_JSONL).write_text(_feedback_lines(reviewed, report["created"]))
        (root / "agreement.json").write_text(json.dumps(report, indent=2, sort_keys=True))
        reports.write_text_atomic(root / "agreement.md", render_markdown(report))
        reports.write_text_atomic(root / "agreement.html", render_html(report))
        marker = {
            k: report[k] for k in ("created", "selection", "export", "format", "model_version", "counts")
        }
        (root / MARKER).write_text(json.dumps({**marker, "batch": BATCH_CSV}, indent=2, sort_keys=True))
        storage.publish_dir(root, output, MARKER)


def import_reviews(
    export_uri: str,
    *,
    selection_uri: str,
    output: str,
    format: str = "label-studio",
    target_precision: float = TARGET_PRECISION,
    check_images: bool = True,
) -> ImportResult:
    """Validate reviewed labels, report the model's agreement with them and write the labeled batch.

    The steps: read the answers, resolve them against the selection (refusing every problem at once), pair
    each answered image with its pre-label, measure agreement per share, write the batch and the reports.
    """
    _check_format(format)
    selection = load_selection(selection_uri)
    selection.require_prelabels()
    answers, n_tasks = read_answers(export_uri, format)
    grouped = _resolve(answers, selection, check_images=check_images)
    reviewed = _reviewed_items(selection, grouped)
    if not reviewed:
        raise DataError(
            f"{export_uri} holds no answers for selection {selection.uri} ({n_tasks} tasks, none labeled); "
            "export again after the review"
        )
    positive = selection.positive_class or default_positive_class(selection.classes)
    stats = agreement_by_share(reviewed, positive=positive, classes=selection.classes)
    report = _import_report(
        selection,
        reviewed,
        stats,
        export_uri=export_uri,
        format=format,
        positive=positive,
        target_precision=target_precision,
        n_answers=len(answers),
        n_tasks=n_tasks,
    )
    _publish(reviewed, report, output)
    log.info(
        "import: %d reviewed, %d changed by people; accuracy %s",
        len(reviewed),
        report["counts"]["changed"],
        _interval_text(stats["all"]["accuracy"]),
    )
    return ImportResult(output=str(output), batch_uri=storage.join(str(output), BATCH_CSV), report=report)
