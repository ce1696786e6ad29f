"""The ``visionops`` command line: one Typer app; each lifecycle stage registers its own commands.

Every stage module ``visionops.<area>.cli`` has ``register(app)``. Errors derived from VisionOpsError are
printed as one clear line (no traceback) and exit with status 2.
"""

from __future__ import annotations

import importlib
import logging
import sys

import typer

from visionops import __version__
from visionops.errors import VisionOpsError
from visionops.settings import ProcessSettings

app = typer.Typer(
    name="visionops",
    help="Images in object storage -> a gated torchvision classifier -> BentoML serving -> drift monitoring -> retraining.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

#: Stage modules, in the order their commands appear in --help.
STAGES = (
    "visionops.data.cli",
    "visionops.training.cli",
    "visionops.weights.cli",
    "visionops.evaluation.cli",
    "visionops.serving.cli",
    "visionops.drift.cli",
    "visionops.deploy.cli",
    "visionops.pipeline.cli",
    "visionops.labeling.cli",
    "visionops.experiments.cli",
    "visionops.demo.cli",
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit()


@app.callback()
def main(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging."),
    version: bool = typer.Option(
        False, "--version", help="Print the version and exit.", is_eager=True, callback=_print_version
    ),
) -> None:
    """VisionOps: a Kubeflow Pipelines component suite for image classification (safety glasses by default)."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else ProcessSettings.from_env().log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


def _register_stages() -> None:
    for module_name in STAGES:
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name is not None and module_name.startswith(exc.name):
                continue  # that stage is not part of this build
            raise
        module.register(app)


_register_stages()


def run() -> None:
    """Entry point: map library errors to a one-line message and exit status 2."""
    try:
        app(standalone_mode=True)
    except VisionOpsError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        sys.exit(2)
