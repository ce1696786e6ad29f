"""Commands: ``visionops monitor`` (the drift sidecar) and ``visionops drift reference``.

Heavy imports (torch, evidently) happen inside the command functions.
"""

from __future__ import annotations

import json

import typer

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


def monitor_command(
    model: str = typer.Option(None, "--model", help="Model bundle URI (env VISIONOPS_MODEL_URI)."),
    host: str = typer.Option(
        None, "--host", help="Address to listen on (default 0.0.0.0) [VISIONOPS_MONITOR_HOST]."
    ),
    port: int = typer.Option(None, "--port", help="Port (default 8001) [VISIONOPS_MONITOR_PORT]."),
    window_size: int = typer.Option(
        None, "--window-size", help="Rows per drift window (default 1000) [VISIONOPS_WINDOW_SIZE]."
    ),
    window_seconds: float = typer.Option(
        None,
        "--window-seconds",
        help="Only compare rows younger than this (default: no age limit) [VISIONOPS_WINDOW_SECONDS].",
    ),
    drift_every_rows: int = typer.Option(
        None,
        "--drift-every-rows",
        help="Compute drift after this many new "
        "rows (default: the window size) [VISIONOPS_DRIFT_EVERY_ROWS].",
    ),
    drift_every_seconds: float = typer.Option(
        None,
        "--drift-every-seconds",
        help="... or after this many seconds (default 60) [VISIONOPS_DRIFT_EVERY_SECONDS].",
    ),
    drift_share: float = typer.Option(
        None,
        "--drift-share",
        help="Dataset drift when this share of columns drifts (default 0.3) [VISIONOPS_DRIFT_SHARE].",
    ),
    report_uri: str = typer.Option(
        None,
        "--report-uri",
        help="Upload the HTML/JSON report here (local dir or s3://...) [VISIONOPS_REPORT_URI].",
    ),
    kfp_host: str = typer.Option(
        None,
        "--kfp-host",
        help="Kubeflow Pipelines API, e.g. http://ml-pipeline.kubeflow:8888 [VISIONOPS_KFP_HOST].",
    ),
    kfp_pipeline: str = typer.Option(
        None,
        "--kfp-pipeline",
        help="Training pipeline name (default visionops-training) [VISIONOPS_KFP_PIPELINE].",
    ),
    kfp_experiment: str = typer.Option(
        None, "--kfp-experiment", help="Experiment for retraining runs [VISIONOPS_KFP_EXPERIMENT]."
    ),
    kfp_params: str = typer.Option(
        None,
        "--kfp-params",
        help='Extra run parameters as JSON, e.g. \'{"data_uri": "s3://data/v2"}\' [VISIONOPS_KFP_PARAMS].',
    ),
    trigger_windows: int = typer.Option(
        None,
        "--trigger-windows",
        help="Retrain after drift in this many consecutive windows (default 2) [VISIONOPS_TRIGGER_WINDOWS].",
    ),
    cooldown: float = typer.Option(
        None,
        "--cooldown",
        help="Seconds between two retraining runs (default 3600) [VISIONOPS_TRIGGER_COOLDOWN_S].",
    ),
    dry_run: bool = typer.Option(
        None,
        "--dry-run/--no-dry-run",
        help="Log and count triggers but start no run [VISIONOPS_TRIGGER_DRY_RUN].",
    ),
    target_precision: float = typer.Option(
        None,
        "--target-precision",
        help="Retrain when live precision of "
        "the positive class falls below this (default 0.95) "
        "[VISIONOPS_TARGET_PRECISION].",
    ),
) -> None:
    """Run the drift monitor sidecar: ingest feature rows, compute drift, expose metrics, trigger retraining."""
    from visionops.drift.sidecar import MonitorSettings, serve
    from visionops.errors import ConfigError

    params = None
    if kfp_params is not None:
        try:
            params = json.loads(kfp_params)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"--kfp-params is not JSON: {exc}") from exc
        if not isinstance(params, dict):
            raise ConfigError("--kfp-params must be a JSON object")
    settings = MonitorSettings.from_env(
        model_uri=model,
        host=host,
        port=port,
        window_size=window_size,
        window_seconds=window_seconds,
        drift_every_rows=drift_every_rows,
        drift_every_seconds=drift_every_seconds,
        drift_share=drift_share,
        report_uri=report_uri,
        kfp_host=kfp_host,
        kfp_pipeline=kfp_pipeline,
        kfp_experiment=kfp_experiment,
        kfp_params=params,
        trigger_windows=trigger_windows,
        trigger_cooldown_s=cooldown,
        trigger_dry_run=dry_run,
        target_precision=target_precision,
    )
    serve(settings)


def register(app: typer.Typer) -> None:
    """Add ``monitor`` and the ``drift`` group to the root app."""
    app.command("monitor")(monitor_command)
    app.add_typer(drift_app, name="drift")
