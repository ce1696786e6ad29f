"""``visionops serve`` and ``visionops package``: thin adapters over the serving library (no heavy imports)."""

from __future__ import annotations

import dataclasses
import os
import sys

import typer

from visionops.serving import SERVICE_IMPORT


def serve_command(settings, *, host: str, port: int, workers: int) -> tuple[list[str], dict[str, str]]:
    """The ``bentoml serve`` command line and environment that run the service with ``settings``."""
    env = {**os.environ, **settings.to_env()}
    overrides = [o for o in env.get("BENTOML_CONFIG_OPTIONS", "").split() if o]
    overrides.append(f"services.visionops.workers={workers}")
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(overrides)
    argv = [sys.executable, "-m", "bentoml", "serve", SERVICE_IMPORT, "--host", host, "--port", str(port)]
    return argv, env


def serve(
    model: str = typer.Option(
        None, "--model", "-m", help="Model bundle URI (dir or s3://). Default: $VISIONOPS_MODEL_URI."
    ),
    host: str = typer.Option(
        "127.0.0.1", envvar="VISIONOPS_HOST", help="Address to listen on (0.0.0.0 in a container)."
    ),
    port: int = typer.Option(3000, envvar="VISIONOPS_PORT", help="Port to listen on."),
    workers: int = typer.Option(1, min=1, help="Server worker processes (each loads the model)."),
    monitor_url: str = typer.Option(
        None, help="Drift sidecar base URL (e.g. http://127.0.0.1:8001); '' = off."
    ),
    threshold: float = typer.Option(None, min=0.0, max=1.0, help="Override the bundle's decision threshold."),
    max_batch_size: int = typer.Option(None, min=2, help="Adaptive batching: largest batch."),
    max_latency_ms: int = typer.Option(None, min=10, help="Adaptive batching: latency bound in ms."),
    prediction_log: str = typer.Option(None, help="Prediction log directory or s3:// prefix (JSON lines)."),
    capture_uri: str = typer.Option(None, help="Payload capture directory or s3:// prefix."),
    capture_rate: float = typer.Option(None, min=0.0, max=1.0, help="Share of requests to capture (0..1)."),
    variant: str = typer.Option(None, help="Experiment variant label on every logged prediction."),
    torch_threads: int = typer.Option(
        None, min=0, help="torch and ONNX Runtime intra-op threads (0 = the container's CPU limit)."
    ),
    runtime: str = typer.Option(
        None, help="auto (fastest measured at package time), torch, onnx, onnx-int8."
    ),
    print_only: bool = typer.Option(False, "--print", help="Print the server command instead of running it."),
) -> None:
    """Serve a model bundle over HTTP with BentoML (the same service the serving container runs)."""
    from visionops.serving.settings import ServingSettings

    options = {
        "model_uri": model,
        "monitor_url": monitor_url,
        "threshold": threshold,
        "max_batch_size": max_batch_size,
        "max_latency_ms": max_latency_ms,
        "prediction_log": prediction_log,
        "capture_uri": capture_uri,
        "capture_rate": capture_rate,
        "variant": variant,
        "torch_threads": torch_threads,
        "runtime": runtime,
    }
    settings = dataclasses.replace(
        ServingSettings.from_env(), **{k: v for k, v in options.items() if v is not None}
    )
    settings.require_model()
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
    app.command("serve")(serve)
    app.command("package")(package_command)
