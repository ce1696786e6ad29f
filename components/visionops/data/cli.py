"""``visionops data synth|ingest|validate``: parse options, call one library function, print where things are."""

from __future__ import annotations

import typer

from visionops.settings import argument, option, options_command

data_app = typer.Typer(
    help="Datasets: synthetic data, ingestion into a versioned manifest, validation.", no_args_is_help=True
)


@data_app.command("synth")
def synth_command(
    output: str = typer.Argument(
        ..., help="Where to write the dataset: a local directory or s3://bucket/prefix."
    ),
    count: int = typer.Option(400, "--count", help="Number of images."),
    size: int = typer.Option(96, "--size", help="Image side in pixels."),
    positive_ratio: float = typer.Option(0.5, "--positive-ratio", help="Share of images with glasses."),
    seed: int = typer.Option(0, "--seed", help="Random seed (same seed -> the same bytes)."),
    shift: str | None = typer.Option(
        None, "--shift", help="Planted shift: dark, blur, greyscale, new_hair or new_background."
    ),
    spurious: str | None = typer.Option(
        None,
        "--spurious",
        help="Planted spurious correlation: red_hair (a few red-haired people, all with glasses).",
    ),
) -> None:
    """Generate procedural faces with and without safety glasses (ImageFolder + labels.csv)."""
    from visionops.data.synth import LABELS_CSV, generate

    uri = generate(
        output,
        count=count,
        size=size,
        positive_ratio=positive_ratio,
        seed=seed,
        shift=shift,
        spurious=spurious,
    )
    n_pos = max(1, min(count - 1, round(count * positive_ratio)))
    typer.echo(
        f"wrote {count} images ({n_pos} glasses, {count - n_pos} no_glasses, {size}x{size}"
        f"{', shift ' + shift if shift else ''}{', spurious ' + spurious if spurious else ''}) to {uri}"
    )
    typer.echo(f"labels: {uri.rstrip('/')}/{LABELS_CSV}")


@data_app.command("ingest")
def ingest_command(
    source: str = typer.Argument(
        ...,
        help="ImageFolder directory/prefix (class = folder name) or a labels CSV "
        "(path,label[,group][,metadata...]); local or s3://.",
    ),
    output: str = typer.Argument(..., help="Dataset directory to write: local or s3://bucket/prefix."),
    golden: str | None = typer.Option(
        None,
        "--golden",
        help="An earlier dataset (or its manifest.csv) whose test split is the golden set to keep.",
    ),
    extend_golden: bool = typer.Option(
        False, "--extend-golden", help="Let new images join the golden test set (changes its version)."
    ),
    val_fraction: float = typer.Option(0.15, "--val-fraction", help="Share of images for validation."),
    test_fraction: float = typer.Option(
        0.15, "--test-fraction", help="Share of images for test (ignored for new images with --golden)."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the split."),
    workers: int = typer.Option(8, "--workers", help="Parallel reads/uploads."),
    positive_class: str | None = typer.Option(
        None, "--positive-class", help="The class whose precision is gated (default: glasses)."
    ),
    allow_outside_source: bool = typer.Option(
        False,
        "--allow-outside-source",
        help="Let a labels CSV or ImageFolder name images outside the source root or bucket "
        "(absolute paths, '..', symlinks, other buckets). Off: such a source is refused.",
    ),
    allow_bucket: list[str] = typer.Option(
        [], "--allow-bucket", help="Another bucket a labels CSV may read images from (repeatable)."
    ),
) -> None:
    """Ingest images into a versioned dataset: hash, decode check, dedupe, group-aware splits, golden set."""
    from visionops.data.ingest import REPORT, Confinement, ingest

    ds = ingest(
        source,
        output,
        golden=golden,
        extend_golden=extend_golden,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        workers=workers,
        positive_class=positive_class,
        confinement=Confinement(allow_outside_source, tuple(allow_bucket)),
    )
    info = ds.meta.get("ingest", {})
    typer.echo(f"dataset {ds.version} written to {ds.uri}")
    typer.echo(f"golden set {ds.golden_version} ({len(ds.split('test'))} test images)")
    for split, counts in ds.meta["counts"].items():
        typer.echo(f"  {split:5s} " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    typer.echo(
        f"found {info.get('found')}, usable {info.get('usable')}, quarantined {info.get('quarantined')}, "
        f"duplicates dropped {info.get('duplicates_dropped')}, label conflicts {info.get('conflicts')}"
    )
    typer.echo(f"report: {ds.uri.rstrip('/')}/{REPORT}")


def _validate(ctx: typer.Context, options: dict, *, manifest: str, output: str | None) -> None:
    """Validate a dataset: counts, balance, sizes, pixels, duplicates, leakage, quarantine, slice coverage."""
    from visionops import storage
    from visionops.data.validate import ValidationPolicy, validate

    policy = ValidationPolicy.from_dict(options)
    dataset = manifest.removesuffix("/manifest.csv")
    report = validate(dataset, output or storage.join(dataset, "validation"), policy=policy)
    st = report.stats
    typer.echo(
        f"dataset {report.dataset_version} (golden {report.golden_version}): {st['images']} images, "
        f"imbalance {st['imbalance_ratio']:g}:1"
    )
    for warning in report.warnings:
        typer.secho(f"warning: {warning}", fg=typer.colors.YELLOW)
    typer.echo(
        f"reports: {report.outputs['html']}\n         {report.outputs['markdown']}\n"
        f"         {report.outputs['json']}"
    )
    if report.passed:
        typer.secho("validation passed", fg=typer.colors.GREEN)
    report.raise_for_failures()


def _validate_command():
    """``visionops data validate``: one option per ValidationPolicy field (:func:`options_command`)."""
    from visionops.data.validate import ValidationPolicy

    before = [argument("manifest", str, help="Dataset directory (or its manifest.csv), local or s3://.")]
    after = [
        option(
            "output",
            str | None,
            None,
            "--output",
            help="Where to write the reports (default: <dataset>/validation).",
        )
    ]
    return options_command(ValidationPolicy, _validate, before=before, after=after)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root CLI."""
    data_app.command("validate")(_validate_command())
    app.add_typer(data_app, name="data")
