"""``visionops pipeline compile | run --local | submit``: thin commands over :mod:`visionops.pipeline`."""

from __future__ import annotations

from pathlib import Path

import typer

from visionops import policy
from visionops.errors import ConfigError

pipeline_app = typer.Typer(
    help="Kubeflow Pipelines: compile the training pipeline, run it locally (kfp.local), submit it to a cluster.",
    no_args_is_help=True,
)

_PARAM_HELP = "Pipeline parameter NAME=VALUE (repeatable; dicts as JSON), e.g. --param epochs=5."


def _settings(
    image: str | None,
    secret: str,
    node_selector: list[str],
    toleration: list[str] | None,
    shm_size: str,
    step_node_selector: list[str] = (),
):
    from visionops.pipeline.cluster import ClusterSettings, parse_node_selector, parse_toleration

    extra = {} if toleration is None else {"tolerations": tuple(parse_toleration(t) for t in toleration)}
    return ClusterSettings(
        image=image or "",
        s3_secret=secret,
        node_selector=parse_node_selector(node_selector),
        step_node_selector=parse_node_selector(step_node_selector),
        shm_size=shm_size,
        **extra,
    )


def _params(items: list[str], **named: object) -> dict[str, object]:
    from visionops.pipeline.training import parse_param_items

    params = parse_param_items(items)
    for name, value in named.items():
        if value is not None:
            if name in params:
                raise ConfigError(f"{name} given twice (as an option and as --param {name}=...)")
            params[name] = value
    return params


IMAGE_OPT = typer.Option(
    None,
    "--image",
    help="Container image of every step (default: visionops.DEFAULT_IMAGE or $VISIONOPS_IMAGE).",
)
SECRET_OPT = typer.Option(
    policy.S3_SECRET_NAME,
    "--secret",
    help="Kubernetes Secret with AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, S3_ENDPOINT_URL.",
)
NODE_SELECTOR_OPT = typer.Option(
    [], "--node-selector", help="Node label KEY=VALUE the train step must run on (repeatable)."
)
TOLERATION_OPT = typer.Option(
    None,
    "--toleration",
    help="Train-step toleration KEY[=VALUE][:EFFECT] (repeatable; default nvidia.com/gpu:NoSchedule).",
)
SHM_OPT = typer.Option("4Gi", "--shm-size", help="Size of the memory-backed /dev/shm of the train step.")
STEP_SELECTOR_OPT = typer.Option(
    [], "--step-node-selector", help="Node label KEY=VALUE every step must run on (repeatable)."
)


@pipeline_app.command("compile")
def compile_cmd(
    output: Path = typer.Argument(..., help="Where to write the IR YAML (upload it in the Kubeflow UI)."),
    pipeline: str = typer.Option(
        "training",
        "--pipeline",
        help="Which pipeline: training, experiment-analysis or weekly-review.",
    ),
    image: str | None = IMAGE_OPT,
    secret: str = SECRET_OPT,
    node_selector: list[str] = NODE_SELECTOR_OPT,
    toleration: list[str] | None = TOLERATION_OPT,
    shm_size: str = SHM_OPT,
    step_node_selector: list[str] = STEP_SELECTOR_OPT,
) -> None:
    """Compile a pipeline (default: training) to KFP IR YAML, with the same cluster settings for each."""
    from visionops.pipeline.compile import compile_pipeline

    settings = _settings(image, secret, node_selector, toleration, shm_size, step_node_selector)
    path = compile_pipeline(output, settings=settings, pipeline=pipeline)
    typer.echo(f"compiled pipeline: {path}")


@pipeline_app.command("run")
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


@pipeline_app.command("submit")
def submit_cmd(
    host: str | None = typer.Option(
        None,
        "--host",
        help="KFP API URL, e.g. http://localhost:8080 (port-forward of ml-pipeline-ui). Empty = in-cluster / kube config.",
    ),
    experiment: str = typer.Option(
        "visionops", "--experiment", help="Experiment name (created when missing)."
    ),
    schedule: str | None = typer.Option(
        None, "--schedule", help="Cron (5 fields, e.g. '0 3 * * *') for a recurring run instead of one run."
    ),
    token: str | None = typer.Option(
        None, "--token", envvar="KFP_TOKEN", help="Bearer token for the KFP API ($KFP_TOKEN)."
    ),
    cookies: str | None = typer.Option(
        None,
        "--cookies",
        envvar="KFP_COOKIES",
        help="Cookie header, e.g. authservice_session=... ($KFP_COOKIES).",
    ),
    namespace: str | None = typer.Option(
        None, "--namespace", help="Kubeflow profile namespace (multi-user installs)."
    ),
    run_name: str | None = typer.Option(None, "--run-name", help="Run name shown in the UI."),
    data: str | None = typer.Option(
        None, "--data", help="Images to train on (s3:// prefix): the data_uri parameter."
    ),
    golden: str | None = typer.Option(None, "--golden", help="Fixed golden test set (dataset URI)."),
    champion: str | None = typer.Option(None, "--champion", help="Champion model bundle URI."),
    param: list[str] = typer.Option([], "--param", "-p", help=_PARAM_HELP),
    package: Path | None = typer.Option(
        None, "--package", help="Upload this compiled YAML instead of compiling now."
    ),
    pipeline_root: str | None = typer.Option(
        None,
        "--pipeline-root",
        help="Where the run's artifacts go, e.g. s3://ml-artifacts/pipeline-root (default: the KFP installation's).",
    ),
    service_account: str | None = typer.Option(
        None, "--service-account", help="Kubernetes service account of the run's pods."
    ),
    image: str | None = IMAGE_OPT,
    secret: str = SECRET_OPT,
    node_selector: list[str] = NODE_SELECTOR_OPT,
    toleration: list[str] | None = TOLERATION_OPT,
    shm_size: str = SHM_OPT,
    step_node_selector: list[str] = STEP_SELECTOR_OPT,
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
        settings=_settings(image, secret, node_selector, toleration, shm_size, step_node_selector),
        package=package,
        service_account=service_account,
        pipeline_root=pipeline_root,
    )
    kind = f"recurring run {result.recurring_run_id}" if result.recurring_run_id else f"run {result.run_id}"
    typer.echo(f"pipeline {result.pipeline_id} version {result.version_name} ({result.version_id})")
    typer.echo(f"experiment {result.experiment_id}: {kind}")
    typer.echo(result.url)


def register(app: typer.Typer) -> None:
    """Add ``visionops pipeline ...`` to the root app."""
    app.add_typer(pipeline_app, name="pipeline")
