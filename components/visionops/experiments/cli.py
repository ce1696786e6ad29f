"""``visionops route`` and ``visionops experiment ...``."""

from __future__ import annotations

import json

import typer

from visionops.policy import TARGET_PRECISION
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
    target_precision: float = typer.Option(TARGET_PRECISION, help="Precision target of the positive class."),
    unit: str = typer.Option(
        "auto",
        "--unit",
        help="Unit of analysis: auto (the randomised unit the logs name), request, or a log column.",
    ),
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
        unit=unit,
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
    if "unit" in result:
        typer.echo(f"unit of analysis: {result['unit']}")
    typer.echo(f"verdict: {result.get('verdict', 'n/a')} — {result.get('reason', '')}")
    if output:
        typer.echo(f"report: {output}/analysis.html")


@experiment_app.command("sample-size")
def sample_size_cmd(
    baseline: float = typer.Option(..., help="Baseline recall of the positive class (e.g. 0.85)."),
    mde: float = typer.Option(..., help="Smallest absolute change worth detecting (e.g. 0.02)."),
    alpha: float = typer.Option(0.05, help="Significance level (two-sided)."),
    power: float = typer.Option(0.8, help="Power."),
    test: str = typer.Option(
        "msprt", help="The test that decides: msprt (what `analyze` uses for its verdict) or fixed."
    ),
    prevalence: float | None = typer.Option(
        None, help="Share of requests that are truly positive (to convert labelled positives to requests)."
    ),
    feedback_rate: float | None = typer.Option(
        None, help="Share of requests that get a reviewed label (to convert to requests)."
    ),
) -> None:
    """Labelled positives (and requests) needed per arm for the test that decides, with its simulated power."""
    from visionops.experiments.stats import sample_size

    try:
        out = sample_size(
            baseline,
            mde,
            alpha=alpha,
            power=power,
            test=test,
            prevalence=prevalence,
            feedback_rate=feedback_rate,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from exc
    out = {"per_arm": out["labelled_positives_per_arm"], **out}
    out["counted_in"] = "labelled positives per arm (requests whose true label is the positive class)"
    typer.echo(json.dumps(out))


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
    """Serve the canary-analysis webhook Flagger / Argo Rollouts call (POST /canary/check).

    The caller states the current canary weight (``canaryWeight`` in percent, in the body or its metadata);
    without it the --weights split is assumed for the whole rollout.
    """
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
