"""``visionops pipeline compile | run --local | submit``: thin commands over :mod:`visionops.pipeline`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionops import policy
from visionops.errors import ConfigError
from visionops.settings import argument, option, options_command

pipeline_app = typer.Typer(
    help="Kubeflow Pipelines: compile the training pipeline, run it locally (kfp.local), submit it to a cluster.",
    no_args_is_help=True,
)

_PARAM_HELP = "Pipeline parameter NAME=VALUE (repeatable; dicts as JSON), e.g. --param epochs=5."


def _params(items: list[str], **named: object) -> dict[str, object]:
    from visionops.pipeline.training import parse_param_items

    params = parse_param_items(items)
    for name, value in named.items():
        if value is not None:
            if name in params:
                raise ConfigError(f"{name} given twice (as an option and as --param {name}=...)")
            params[name] = value
    return params


def cluster_settings(options: dict):
    """The :class:`~visionops.pipeline.cluster.ClusterSettings` of the cluster options typed (the rest: the
    field defaults), checked once, by ClusterSettings."""
    from visionops.pipeline.cluster import ClusterSettings

    return ClusterSettings.from_dict(options)


def _compile(ctx: typer.Context, options: dict, *, output: Path, pipeline: str) -> None:
    """Compile a pipeline (default: training) to KFP IR YAML, with the same cluster settings for each."""
    from visionops.pipeline.compile import compile_pipeline

    path = compile_pipeline(output, settings=cluster_settings(options), pipeline=pipeline)
    typer.echo(f"compiled pipeline: {path}")


def _compile_command():
    """``visionops pipeline compile``: the output and the pipeline, then one option per ClusterSettings field."""
    from visionops.pipeline.cluster import ClusterSettings

    before = [
        argument("output", Path, help="Where to write the IR YAML (upload it in the Kubeflow UI)."),
        option(
            "pipeline",
            str,
            "training",
            "--pipeline",
            help="Which pipeline: training, experiment-analysis or weekly-review.",
        ),
    ]
    return options_command(ClusterSettings, _compile, before=before)


def run_cmd(
    local: bool = typer.Option(
        False, "--local", help="Run with kfp.local in this Python environment (required)."
    ),
    data: str | None = typer.Option(
        None,
        "--data",
        help="Images to train on (ImageFolder dir or s3:// prefix). Default: draw the synthetic demo set.",
    ),
    output: Path = typer.Option(
        Path("runs/local"), "--output", "-o", help="Folder for the demo data and the pipeline root."
    ),
    golden: str | None = typer.Option(None, "--golden", help="Fixed golden test set (dataset URI)."),
    champion: str | None = typer.Option(None, "--champion", help="Champion model bundle to compare against."),
    architecture: str | None = typer.Option(
        None, "--architecture", help="Model architecture (local default small_cnn)."
    ),
    epochs: int | None = typer.Option(None, "--epochs", help="Training epochs (local default 6)."),
    target_precision: float | None = typer.Option(
        None,
        "--target-precision",
        help=f"Precision target of the positive class (default {policy.TARGET_PRECISION}).",
    ),
    param: list[str] = typer.Option([], "--param", "-p", help=_PARAM_HELP),
    demo_count: int = typer.Option(
        1000, "--demo-count", help="Synthetic images to draw when --data is not given."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the demo data, the splits and training."),
) -> None:
    """Run the whole training pipeline locally and print a summary (verdict, metrics, where everything is)."""
    if not local:
        raise ConfigError(
            "only --local runs happen here; use `visionops pipeline submit --host URL` for a cluster"
        )
    from visionops.pipeline.local import format_summary, run_local

    params = _params(
        param,
        golden_uri=golden,
        champion_uri=champion,
        architecture=architecture,
        epochs=epochs,
        target_precision=target_precision,
    )
    result = run_local(output, data_uri=data, params=params, demo_count=demo_count, seed=seed)
    typer.echo(format_summary(result))


def _submit(
    ctx: typer.Context,
    options: dict,
    *,
    host: str | None,
    experiment: str,
    schedule: str | None,
    token: str | None,
    cookies: str | None,
    namespace: str | None,
    run_name: str | None,
    data: str | None,
    golden: str | None,
    champion: str | None,
    param: list[str],
    package: Path | None,
    pipeline_root: str | None,
    service_account: str | None,
) -> None:
    """Upload the pipeline (a new version when it exists) and start a run, or a recurring run with --schedule."""
    from visionops.pipeline.submit import submit

    result = submit(
        host,
        experiment=experiment,
        schedule=schedule,
        params=_params(param, data_uri=data, golden_uri=golden, champion_uri=champion),
        token=token,
        cookies=cookies,
        namespace=namespace,
        run_name=run_name,
        settings=cluster_settings(options),
        package=package,
        service_account=service_account,
        pipeline_root=pipeline_root,
    )
    kind = f"recurring run {result.recurring_run_id}" if result.recurring_run_id else f"run {result.run_id}"
    typer.echo(f"pipeline {result.pipeline_id} version {result.version_name} ({result.version_id})")
    typer.echo(f"experiment {result.experiment_id}: {kind}")
    typer.echo(result.url)


def _submit_command():
    """``visionops pipeline submit``: where and what to run, then one option per ClusterSettings field."""
    from visionops.pipeline.cluster import ClusterSettings

    before = [
        option(
            "host",
            str | None,
            None,
            "--host",
            help="KFP API URL, e.g. http://localhost:8080 (port-forward of ml-pipeline-ui). "
            "Empty = in-cluster / kube config.",
        ),
        option(
            "experiment", str, "visionops", "--experiment", help="Experiment name (created when missing)."
        ),
        option(
            "schedule",
            str | None,
            None,
            "--schedule",
            help="Cron (5 fields, e.g. '0 3 * * *') for a recurring run instead of one run.",
        ),
        option(
            "token",
            str | None,
            None,
            "--token",
            envvar="KFP_TOKEN",
            help="Bearer token for the KFP API ($KFP_TOKEN).",
        ),
        option(
            "cookies",
            str | None,
            None,
            "--cookies",
            envvar="KFP_COOKIES",
            help="Cookie header, e.g. authservice_session=... ($KFP_COOKIES).",
        ),
        option(
            "namespace",
            str | None,
            None,
            "--namespace",
            help="Kubeflow profile namespace (multi-user installs).",
        ),
        option("run_name", str | None, None, "--run-name", help="Run name shown in the UI."),
        option(
            "data",
            str | None,
            None,
            "--data",
            help="Images to train on (s3:// prefix): the data_uri parameter.",
        ),
        option("golden", str | None, None, "--golden", help="Fixed golden test set (dataset URI)."),
        option("champion", str | None, None, "--champion", help="Champion model bundle URI."),
        option("param", list[str], [], "--param", "-p", help=_PARAM_HELP),
        option(
            "package",
            Path | None,
            None,
            "--package",
            help="Upload this compiled YAML instead of compiling now.",
        ),
        option(
            "pipeline_root",
            str | None,
            None,
            "--pipeline-root",
            help="Where the run's artifacts go, e.g. s3://ml-artifacts/pipeline-root "
            "(default: the KFP installation's).",
        ),
        option(
            "service_account",
            str | None,
            None,
            "--service-account",
            help="Kubernetes service account of the run's pods.",
        ),
    ]
    return options_command(ClusterSettings, _submit, before=before)


def register(app: typer.Typer) -> None:
    """Add ``visionops pipeline ...`` to the root app."""
    pipeline_app.command("compile")(_compile_command())
    pipeline_app.command("run")(run_cmd)
    pipeline_app.command("submit")(_submit_command())
    app.add_typer(pipeline_app, name="pipeline")
