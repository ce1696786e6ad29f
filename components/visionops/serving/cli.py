"""``visionops serve`` and ``visionops package``: thin adapters over the serving library (no heavy imports)."""

from __future__ import annotations

import os
import sys

import typer

from visionops.serving import SERVICE_IMPORT
from visionops.settings import option, options_command


def serve_command(settings, *, host: str, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that run the service with ``settings``."""
    env = {**os.environ, **settings.to_env()}
    overrides = [o for o in env.get("BENTOML_CONFIG_OPTIONS", "").split() if o]
    overrides.append(f"services.visionops.workers={workers}")
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(overrides)
    launcher = "visionops.serving.launch"  # bentoml serve with a metrics directory per instance
    argv = [sys.executable, "-m", launcher, "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]
    return argv, env


def _check_startable(settings) -> None:
    """Fail fast, before the server starts: a missing model URI or a bundle whose metadata no model can be
    served with raises a VisionOpsError that the CLI prints as one line and exits non-zero on, instead of a
    server that crash-loops on load or serves nonsense. Reads only ``bundle.json`` (no torch import)."""
    from visionops.bundle import read_meta

    read_meta(settings.require_model())


def _serve(
    ctx: typer.Context, options: dict, *, host: str, port: int, workers: int, print_only: bool
) -> None:
    """Serve a model bundle over HTTP with BentoML (the same service the serving container runs)."""
    from visionops.serving.settings import ServingSettings

    settings = ServingSettings.from_env(**options)
    _check_startable(settings)
    argv, env = serve_command(settings, host=host, port=port, workers=workers)
    if print_only:
        shown = {k: v for k, v in env.items() if k.startswith(("VISIONOPS_", "BENTOML_")) and v}
        typer.echo(" ".join(f"{k}={v}" for k, v in sorted(shown.items())) + " " + " ".join(argv))
        return
    typer.echo(
        f"serving {settings.model_uri} on http://{host}:{port} (POST /classify, /classify_batch, /feedback)"
    )
    sys.stdout.flush()
    os.execve(argv[0], argv, env)  # the server replaces this process: signals reach it directly


def _serve_command():
    """``visionops serve``: one option per ServingSettings field (explicit options > VISIONOPS_* > defaults)."""
    from visionops.serving.settings import ServingSettings

    before = [
        option(
            "host",
            str,
            "127.0.0.1",
            "--host",
            envvar="VISIONOPS_HOST",
            help="Address to listen on (0.0.0.0 in a container).",
        ),
        option("port", int, 3000, "--port", envvar="VISIONOPS_PORT", help="Port to listen on."),
        option("workers", int, 1, "--workers", min=1, help="Server worker processes (each loads the model)."),
    ]
    after = [
        option("print_only", bool, False, "--print", help="Print the server command instead of running it.")
    ]
    return options_command(ServingSettings, _serve, before=before, after=after)


def package_command(
    bundle: str = typer.Argument(..., help="Model bundle URI (dir or s3://)."),
    output: str = typer.Argument(
        ..., help="Where the .bento archive goes: a *.bento file, a directory or s3:// prefix."
    ),
    dataset: str = typer.Option(
        None, help="Dataset whose golden images prove ONNX parity (default: the bundle's training dataset)."
    ),
    onnx: bool = typer.Option(True, help="Export model.onnx (parity-checked, timed against PyTorch)."),
    int8: bool = typer.Option(False, help="Also add model.int8.onnx, calibrated on training images."),
) -> None:
    """Build a Bento for BUNDLE (service + model + pinned Python environment) and export the .bento archive.

    First exports the model to ONNX (dynamic batch) and records parity and speed in the bundle, so the service
    can serve with ONNX Runtime (VISIONOPS_RUNTIME).
    """
    from visionops.serving.package import package

    typer.echo(package(bundle, output, dataset_uri=dataset, onnx=onnx, int8=int8))


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``package`` to the root CLI."""
    app.command("serve")(_serve_command())
    app.command("package")(package_command)
