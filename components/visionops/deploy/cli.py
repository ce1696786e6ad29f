"""``visionops deploy MODEL_URI``: roll serving forward to a model bundle (thin adapter over deploy())."""

from __future__ import annotations

import json

import typer


def register(app: typer.Typer) -> None:
    """Add the ``deploy`` command to the root app."""
    app.command("deploy")(deploy_command)


def deploy_command(
    model_uri: str = typer.Argument(..., help="The model bundle to serve, e.g. s3://models/glasses/v7."),
    target: str = typer.Option(
        "kubernetes",
        "--target",
        help="kubernetes (patch the serving Deployment and wait), local (write STATE_DIR/current_model.json) "
        "or none.",
    ),
    namespace: str = typer.Option(
        "visionops", "--namespace", "-n", help="Namespace of the serving Deployment."
    ),
    deployment: str = typer.Option(
        "visionops-serving", "--deployment", help="Name of the serving Deployment."
    ),
    container: list[str] = typer.Option(
        [],
        "--container",
        "-c",
        help="Container(s) to update (repeatable). Default: every container that sets VISIONOPS_MODEL_URI.",
    ),
    timeout: float = typer.Option(600.0, "--timeout", help="Seconds to wait for the rollout before failing."),
    state_dir: str = typer.Option(
        "runs/deploy", "--state-dir", help="Where the local target writes current_model.json."
    ),
    check_bundle: bool = typer.Option(
        True, "--check-bundle/--no-check-bundle", help="Refuse a URI whose bundle.json is missing."
    ),
    rollback: bool = typer.Option(
        True, "--rollback/--no-rollback", help="On a failed rollout, patch the previous model URI back."
    ),
) -> None:
    """Point serving at MODEL_URI: a rolling update on Kubernetes (waits for it), or a local state file."""
    from visionops.deploy import deploy

    record = deploy(
        model_uri,
        target=target,
        namespace=namespace,
        deployment=deployment,
        container=container or None,
        timeout_s=timeout,
        state_dir=state_dir,
        check_bundle=check_bundle,
        rollback_on_failure=rollback,
    )
    typer.echo(json.dumps(record, indent=2))
