"""Commands: ``visionops monitor`` (the drift sidecar) and ``visionops drift reference``.

Heavy imports (torch, evidently) happen inside the command functions.
"""

from __future__ import annotations

import json

import typer

from visionops.settings import options_command

drift_app = typer.Typer(help="Drift monitoring: reference profiles for model bundles.", no_args_is_help=True)


@drift_app.command("reference")
def reference_command(
    model: str = typer.Option(..., "--model", help="Model bundle URI (local dir or s3://bucket/prefix)."),
    data: str = typer.Option(..., "--data", help="Dataset URI whose split becomes the reference."),
    split: str = typer.Option("val", "--split", help="Dataset split to profile (train, val or test)."),
    max_rows: int = typer.Option(2000, "--max-rows", help="At most this many images (a seeded sample)."),
    components: int = typer.Option(
        6, "--components", help="Embedding dimensions kept by the PCA projection."
    ),
) -> None:
    """Compute the drift reference profile of a dataset split and store it in the bundle's drift slot."""
    from visionops.drift.reference import attach_reference

    entry = attach_reference(model, data, split=split, max_rows=max_rows, components=components)
    typer.echo(
        json.dumps(
            {
                k: entry[k]
                for k in ("rows", "split", "dataset_version", "embedding_dim", "class_shares", "reference")
            },
            indent=2,
        )
    )


def _monitor(ctx: typer.Context, options: dict) -> None:
    """Run the drift monitor sidecar: ingest feature rows, compute drift, expose metrics, trigger retraining."""
    from visionops.drift.service import serve
    from visionops.drift.settings import MonitorSettings

    serve(MonitorSettings.from_env(**options))


def monitor_command():
    """``visionops monitor``: one option per MonitorSettings field (explicit options > VISIONOPS_* > defaults)."""
    from visionops.drift.settings import MonitorSettings

    return options_command(MonitorSettings, _monitor)


def register(app: typer.Typer) -> None:
    """Add ``monitor`` and the ``drift`` group to the root app."""
    app.command("monitor")(monitor_command())
    app.add_typer(drift_app, name="drift")
