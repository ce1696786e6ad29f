"""``visionops label select | prelabel | export | import | merge | prepare | config``: thin commands over
:mod:`visionops.labeling`."""

from __future__ import annotations

import json
from datetime import timedelta

import typer

from visionops.policy import TARGET_PRECISION

label_app = typer.Typer(
    help="The labeling loop: choose captured images for review, pre-label them with the champion, export "
    "tasks (Label Studio / CSV), import the reviewed labels and merge them into the next dataset version.",
    no_args_is_help=True,
)

MODEL_HELP = "Model bundle URI (the champion): its threshold and classes drive selection and pre-labels."
EXPIRY_OPT = typer.Option(168.0, "--url-expiry-hours", help="Validity of presigned s3 image links (max 168).")
PRESIGN_OPT = typer.Option(
    None,
    "--presign-endpoint",
    help="Object-store URL reviewers' browsers reach (e.g. https://minio.example.com), if not S3_ENDPOINT_URL.",
)


def _expiry(hours: float) -> timedelta:
    return timedelta(hours=hours)


@label_app.command("select")
def select_cmd(
    source: str = typer.Argument(
        ..., help="Capture prefix (VISIONOPS_CAPTURE_URI), image folder, or CSV with path."
    ),
    output: str = typer.Argument(..., help="Where to write the selection (folder or s3:// prefix)."),
    budget: int = typer.Option(..., "--budget", "-n", help="How many images to send for review."),
    model: str | None = typer.Option(
        None, "--model", help=MODEL_HELP + " Needed for images without stored predictions."
    ),
    random_share: float = typer.Option(
        0.2, "--random-share", help="Share of the budget drawn at random (0..1)."
    ),
    labeled: list[str] = typer.Option(
        [],
        "--labeled",
        help="Already-labeled data to skip by hash: dataset, batch CSV, selection (repeatable).",
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random share."),
    days: int | None = typer.Option(None, "--days", help="Only images captured in the last N days (UTC)."),
    device: str = typer.Option("cpu", "--device", help="Torch device for scoring (cpu, cuda, cuda:1...)."),
    allow_outside_source: bool = typer.Option(
        False,
        "--allow-outside-source",
        help="Let a source CSV (or symlinks in a folder) name images outside the source; off: refused.",
    ),
) -> None:
    """Choose images for review: the most uncertain (closest to the threshold) plus a random share."""
    from visionops.data.ingest import Confinement
    from visionops.labeling.select import select

    selection = select(
        source,
        output,
        budget=budget,
        bundle_uri=model,
        random_share=random_share,
        labeled=labeled,
        seed=seed,
        days=days,
        device=device,
        confinement=Confinement(allow_outside_source=allow_outside_source),
    )
    counts = selection.meta["counts"]
    typer.echo(
        f"selected {counts['selected']} of {counts['eligible']} eligible images "
        f"({counts['uncertain']} uncertain, {counts['random']} random; {counts['duplicates_in_source']} duplicates, "
        f"{counts['already_labeled']} already labeled, {counts['unusable']} unusable) -> {selection.uri}"
    )


@label_app.command("prelabel")
def prelabel_cmd(
    selection: str = typer.Argument(..., help="Selection written by `label select`."),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    output: str | None = typer.Option(
        None, "--output", help="Write the pre-labeled selection here (default: in place)."
    ),
    device: str = typer.Option("cpu", "--device", help="Torch device (cpu, cuda, cuda:1...)."),
    batch_size: int = typer.Option(64, "--batch-size", help="Images per forward pass."),
) -> None:
    """Pre-label the selected images with the model: predicted label and confidence per image."""
    from visionops.labeling.prelabel import prelabel

    result = prelabel(selection, model, output=output, device=device, batch_size=batch_size)
    counts = result.meta["prelabel"]["counts"]
    typer.echo(
        f"pre-labeled {len(result.frame)} images with {result.meta['prelabel']['model_version']}: {counts}"
    )


@label_app.command("export")
def export_cmd(
    selection: str = typer.Argument(..., help="Pre-labeled selection."),
    output: str = typer.Argument(..., help="Output file (tasks.json for Label Studio, review.csv for CSV)."),
    format: str = typer.Option("label-studio", "--format", help="label-studio (JSON import) or csv."),
    url_expiry_hours: float = EXPIRY_OPT,
    presign_endpoint: str | None = PRESIGN_OPT,
    local_files_root: str | None = typer.Option(
        None,
        "--local-files-root",
        help="Label Studio LOCAL_FILES_DOCUMENT_ROOT: local images become local-files URLs.",
    ),
) -> None:
    """Write review tasks with the model's pre-labels filled in."""
    from visionops.labeling.export import export

    uri = export(
        selection,
        output,
        format=format,
        url_expiry=_expiry(url_expiry_hours),
        presign_endpoint=presign_endpoint,
        local_files_root=local_files_root,
    )
    typer.echo(f"wrote {format} tasks: {uri}")


@label_app.command("import")
def import_cmd(
    export_uri: str = typer.Argument(
        ..., metavar="EXPORT", help="Label Studio JSON export or the filled review CSV."
    ),
    selection: str = typer.Option(..., "--selection", help="The selection the tasks were exported from."),
    output: str = typer.Option(
        ..., "--output", help="Folder for batch.csv, reviews.csv and the agreement report."
    ),
    format: str = typer.Option("label-studio", "--format", help="label-studio or csv."),
    target_precision: float = typer.Option(
        TARGET_PRECISION, "--target-precision", help="Precision target of the positive class."
    ),
) -> None:
    """Validate reviewed labels, report the model's agreement with people, write the labeled batch."""
    from visionops.labeling.importer import import_reviews

    result = import_reviews(
        export_uri, selection_uri=selection, output=output, format=format, target_precision=target_precision
    )
    report = result.report
    typer.echo(f"reviewed {result.reviewed} images, {result.changed} changed by people -> {result.batch_uri}")
    for subset, stats in report["agreement"].items():
        parts = []
        for name in ("accuracy", "precision", "recall"):
            s = stats[name]
            parts.append(
                f"{name} n/a"
                if s["value"] is None
                else f"{name} {s['value']:.3f} [{s['low']:.3f}, {s['high']:.3f}]"
            )
        typer.echo(f"  {subset} (n={stats['n']}): " + ", ".join(parts))
    typer.echo(f"  live precision: {report['live_precision_status']}")


@label_app.command("merge")
def merge_cmd(
    previous: str = typer.Argument(..., help="The current dataset version."),
    batch: str = typer.Argument(..., help="Labeled batch CSV written by `label import` (batch.csv)."),
    output: str = typer.Argument(
        ..., help="Where to write the new dataset version (or the CSV, --csv-only)."
    ),
    seed: int = typer.Option(0, "--seed", help="Split seed for the new images."),
    csv_only: bool = typer.Option(
        False,
        "--csv-only",
        help="Only write the combined labels CSV (for a pipeline run with --golden PREVIOUS).",
    ),
    extend_golden: int = typer.Option(
        0,
        "--extend-golden",
        help="Add N of the batch's new (never trained-on) images to the golden set, at the production "
        "prevalence; the golden version changes.",
    ),
    positive_prevalence: float | None = typer.Option(
        None, help="Production share of the positive class for --extend-golden (default: the batch's share)."
    ),
) -> None:
    """Ingest the previous version plus the batch as a new dataset version: earlier rows keep their split,
    new rows fill train/val, and the golden set is unchanged unless --extend-golden N."""
    from visionops.labeling.merge import merge_batch, write_combined_labels

    if csv_only and extend_golden:
        raise typer.BadParameter("--extend-golden needs the merge itself; drop --csv-only")
    if csv_only:
        typer.echo(
            f"combined labels -> {write_combined_labels(previous, batch, output)} (ingest with --golden {previous}; add --allow-outside-source where its images are not under its folder)"
        )
        return
    dataset = merge_batch(
        previous, batch, output, seed=seed, extend_golden=extend_golden, prevalence=positive_prevalence
    )
    typer.echo(f"dataset {dataset.version} (golden set {dataset.golden_version}) -> {dataset.uri}")


@label_app.command("prepare")
def prepare_cmd(
    source: str = typer.Argument(..., help="Capture prefix, image folder or CSV."),
    output: str = typer.Argument(
        ...,
        help="Folder for the selection, tasks.json, review.csv, labeling_config.xml ({date}/{week} filled).",
    ),
    model: str = typer.Option(..., "--model", help=MODEL_HELP),
    budget: int = typer.Option(..., "--budget", "-n", help="How many images to send for review."),
    random_share: float = typer.Option(
        0.2, "--random-share", help="Share of the budget drawn at random (0..1)."
    ),
    labeled: list[str] = typer.Option(
        [], "--labeled", help="Already-labeled data to skip by hash (repeatable)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the random share."),
    days: int | None = typer.Option(None, "--days", help="Only images captured in the last N days (UTC)."),
    url_expiry_hours: float = EXPIRY_OPT,
    presign_endpoint: str | None = PRESIGN_OPT,
) -> None:
    """select + prelabel + export in one go (what the weekly KFP step runs)."""
    from visionops.labeling.prepare import prepare_review_batch

    summary = prepare_review_batch(
        source,
        output,
        bundle_uri=model,
        budget=budget,
        random_share=random_share,
        labeled=labeled,
        seed=seed,
        days=days,
        url_expiry=_expiry(url_expiry_hours),
        presign_endpoint=presign_endpoint,
    )
    typer.echo(json.dumps(summary, indent=2))


@label_app.command("config")
def config_cmd(
    model: str | None = typer.Option(None, "--model", help="Take the classes from this bundle."),
    classes: str | None = typer.Option(
        None, "--classes", help="Comma-separated classes (instead of --model)."
    ),
) -> None:
    """Print the Label Studio labeling config (XML) matching the exported tasks."""
    from visionops.errors import ConfigError
    from visionops.labeling.export import labeling_config

    if model:
        from visionops.bundle import read_meta

        names = list(read_meta(model)["classes"])
    elif classes:
        names = [c.strip() for c in classes.split(",") if c.strip()]
    else:
        raise ConfigError("pass --model BUNDLE or --classes glasses,no_glasses")
    typer.echo(labeling_config(names), nl=False)


def register(app: typer.Typer) -> None:
    """Add the ``label`` commands to the root app."""
    app.add_typer(label_app, name="label")
