"""``visionops demo loop``: the closed loop end to end on this machine (a thin adapter over demo.loop)."""

from __future__ import annotations

from pathlib import Path

import typer

demo_app = typer.Typer(help="Demos that run every part for real on 127.0.0.1.", no_args_is_help=True)


@demo_app.command("loop")
def loop_command(
    output: Path = typer.Option(
        Path("runs/demo"), "--output", "-o", help="Folder for everything the demo writes."
    ),
    fast: bool = typer.Option(
        False, "--fast", help="Tiny scale (fewer images and epochs): what the test runs."
    ),
    observability: bool = typer.Option(
        None,
        "--observability/--no-observability",
        help="Use a real Prometheus + Alertmanager (default: when installed; otherwise the sidecar's own trigger).",
    ),
    count: int = typer.Option(
        None, "--count", help="Synthetic images for the champion (default 1000, fast 160)."
    ),
    epochs: int = typer.Option(
        None, "--epochs", help="Champion training epochs (default: the pipeline's laptop recipe; fast 2)."
    ),
    timeout: float = typer.Option(600.0, "--stage-timeout", help="Seconds any one stage may take."),
    seed: int = typer.Option(0, "--seed", help="Seed of the data, the splits and training."),
    real: bool = typer.Option(
        False,
        "--real",
        help="Real photos: champion on faces-glasses lfw_5590, production = faces-stream net_7876.",
    ),
    reduced: bool = typer.Option(False, "--reduced", help="With --real: the test's smaller scale."),
    champion_dir: Path = typer.Option(
        None, "--champion-dir", help="With --real: the champion's labelled folder."
    ),
    stream_dir: Path = typer.Option(
        None, "--stream-dir", help="With --real: the production stream's folder."
    ),
    champion: str = typer.Option(
        None, "--champion", help="With --real: serve this bundle as the champion instead of training one."
    ),
) -> None:
    """Champion -> serving + drift sidecar + Prometheus + Alertmanager -> shifted traffic -> alert -> retraining
    (warm start, reviewed shifted images) -> gate -> roll forward. Prints a timeline; exit 1 if a stage failed."""
    import logging
    import signal

    from visionops.demo.loop import LoopConfig, run_loop

    def interrupt(signum, frame):  # SIGTERM cleans up like Ctrl-C
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    logging.getLogger("visionops").setLevel(logging.WARNING)
    changes = {
        k: v
        for k, v in {"count": count, "epochs": epochs, "use_observability": observability}.items()
        if v is not None
    }
    changes.update(stage_timeout_s=timeout, seed=seed)
    if real:
        from visionops.demo.real import RealLoopConfig, run_real_loop

        changes.pop("count", None)
        changes.update(
            {
                k: v
                for k, v in {
                    "champion_dir": champion_dir,
                    "stream_dir": stream_dir,
                    "champion_uri": champion,
                }.items()
                if v
            }
        )
        cfg = (
            RealLoopConfig.reduced(output, **changes) if reduced else RealLoopConfig(output=output, **changes)
        )
        result = run_real_loop(cfg, echo=typer.echo)
    else:
        cfg = LoopConfig.tiny(output, **changes) if fast else LoopConfig(output=output, **changes)
        result = run_loop(cfg, echo=typer.echo)
    if not result.ok:
        failed = [name for name, ok in result.checks.items() if not ok]
        typer.secho(f"the loop failed: {', '.join(failed) or 'see the timeline'}", err=True, fg="red")
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    """Add ``visionops demo ...`` to the root app."""
    app.add_typer(demo_app, name="demo")
