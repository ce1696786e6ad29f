"""``visionops route`` and ``visionops experiment ...``."""

from __future__ import annotations

import json

import typer

from visionops.settings import option, options_command

experiment_app = typer.Typer(
    help="Online experiments: sample size, analysis of shadow / canary / A/B runs.", no_args_is_help=True
)


@experiment_app.command("analyze")
def analyze_cmd(
    logs: list[str] = typer.Argument(..., help="JSON-lines logs (files or folders, local or s3://)."),
    design: str = typer.Option(..., "--design", help="shadow | canary | ab | aab"),
    feedback: str | None = typer.Option(
        None, "--feedback", help="JSON lines {request_id, label}: ground truth."
    ),
    weights: str | None = typer.Option(
        None, "--weights", help="Configured split, e.g. a=50,b=50 (default: equal)."
    ),
    control: str | None = typer.Option(None, "--control", help="Control / baseline / primary variant name."),
    capture: str | None = typer.Option(None, "--capture", help="Payload capture URI (shadow gallery)."),
    target_precision: float = typer.Option(0.95, help="Precision target of the positive class."),
    mde: float = typer.Option(0.02, help="Minimum detectable effect (absolute) for the sample size."),
    alpha: float = typer.Option(0.05, help="Significance level."),
    output: str | None = typer.Option(
        None, "--output", "-o", help="Folder for analysis.json / analysis.html."
    ),
) -> None:
    """Analyze an experiment's logs: the sample-ratio check first, then the design's figures and a verdict."""
    from visionops.experiments.analysis import AnalysisConfig, analyze
    from visionops.experiments.assign import parse_weights

    config = AnalysisConfig(
        design=design,
        weights=parse_weights(weights) if weights else None,
        control=control,
        target_precision=target_precision,
        mde=mde,
        alpha=alpha,
    )
    result = analyze(logs, config=config, feedback=feedback, capture=capture, output=output)
    srm = result.get("srm")
    if srm:
        typer.echo(
            f"sample ratio: {'MISMATCH' if srm['mismatch'] else 'ok'} (p={srm['p_value']:.3g}) {srm['counts']}"
        )
    if design == "shadow":
        typer.echo(f"agreement: {result['agreement']:.4f} on {result['paired_requests']} paired requests")
    typer.echo(f"verdict: {result.get('verdict', 'n/a')} — {result.get('reason', '')}")
    if output:
        typer.echo(f"report: {output}/analysis.html")


@experiment_app.command("sample-size")
def sample_size_cmd(
    baseline: float = typer.Option(..., help="Baseline rate of the metric (e.g. recall 0.85)."),
    mde: float = typer.Option(..., help="Smallest absolute change worth detecting (e.g. 0.02)."),
    alpha: float = typer.Option(0.05, help="Significance level (two-sided)."),
    power: float = typer.Option(0.8, help="Power."),
) -> None:
    """Units (with feedback) needed per arm before starting an A/B test."""
    from visionops.experiments.stats import sample_size_per_arm

    typer.echo(json.dumps({"per_arm": sample_size_per_arm(baseline, mde, alpha=alpha, power=power)}))


@experiment_app.command("webhook")
def webhook_cmd(
    logs: str = typer.Option(
        ..., "--logs", help="Experiment logs to analyse at each check (file, folder or s3://)."
    ),
    weights: str = typer.Option("baseline=90,canary=10", "--weights", help="Configured split."),
    control: str = typer.Option("baseline", "--control", help="Baseline variant name."),
    min_samples: int = typer.Option(200, help="Requests per variant before a promote verdict."),
    host: str = typer.Option("0.0.0.0", help="Bind address."),
    port: int = typer.Option(8090, help="Port."),
) -> None:
    """Serve the canary-analysis webhook Flagger / Argo Rollouts call (POST /canary/check)."""
    from aiohttp import web

    from visionops.experiments.analysis import AnalysisConfig
    from visionops.experiments.assign import parse_weights
    from visionops.experiments.webhook import build_app

    config = AnalysisConfig(
        design="canary", weights=parse_weights(weights), control=control, min_samples=min_samples
    )
    web.run_app(build_app(logs, config), host=host, port=port, access_log=None, print=None)


def _route(ctx: typer.Context, options: dict, *, host: str, port: int) -> None:
    """Route requests to model variants by policy (fixed weights, sticky units, Thompson sampling)."""
    from visionops.experiments.router import RouterSettings, serve

    settings = RouterSettings.from_env(**options)
    settings.validate()  # before the server starts: a missing variant is a usage error
    serve(settings, host=host, port=port)


def route_cmd():
    """``visionops route``: one option per RouterSettings field (explicit options > VISIONOPS_ROUTER_* > defaults)."""
    from visionops.experiments.router import RouterSettings

    after = [
        option("host", str, "0.0.0.0", "--host", help="Bind address."),
        option("port", int, 8080, "--port", help="Port."),
    ]
    return options_command(RouterSettings, _route, after=after)


def register(app: typer.Typer) -> None:
    app.add_typer(experiment_app, name="experiment")
    app.command("route")(route_cmd())
