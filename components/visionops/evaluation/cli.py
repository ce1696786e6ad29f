"""``visionops evaluate``: the promotion gate from the command line (a thin adapter over
:func:`visionops.evaluation.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import typer

from visionops.policy import CONFIDENCE, POSITIVE_CLASS, TARGET_PRECISION


def _load_policy_file(path: Path | None) -> dict:
    from visionops.errors import ConfigError

    if path is None:
        return {}
    import yaml

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read gate policy file {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"gate policy file {path} must hold a mapping of GatePolicy fields")
    return data


def evaluate_command(
    bundle: str = typer.Argument(
        ..., help="Model bundle to evaluate (the challenger): local dir or s3:// URI."
    ),
    manifest: str = typer.Argument(
        ...,
        help="Dataset (dir with manifest.csv + dataset.json): val picks the "
        "threshold, test is the golden set.",
    ),
    output: str = typer.Argument(..., help="Where to write metrics.json, decision.json, model_card.md/html."),
    champion: str | None = typer.Option(
        None, "--champion", help="Bundle of the current champion to compare with."
    ),
    policy_file: Path | None = typer.Option(
        None,
        "--policy",
        exists=True,
        dir_okay=False,
        help="YAML/JSON file of GatePolicy fields (options below override it).",
    ),
    target_precision: float | None = typer.Option(
        None, help=f"Precision the positive class must prove (default: {TARGET_PRECISION})."
    ),
    positive_prevalence: float | None = typer.Option(
        None,
        help="Share of the positive class expected in production (stated, or estimated from labelled "
        "production samples); the precision promise is proven at it (default: the validation split's share).",
    ),
    confidence: float | None = typer.Option(
        None, help=f"Confidence of the precision proof (default: {CONFIDENCE}; one-sided error (1 - c) / 2)."
    ),
    interval: str | None = typer.Option(
        None, help="Interval method: wilson or clopper-pearson (default: wilson)."
    ),
    positive_class: str | None = typer.Option(
        None, help=f"Positive class (default: the bundle's, e.g. {POSITIVE_CLASS})."
    ),
    recall_tolerance: float | None = typer.Option(
        None, help="Non-inferiority margin: recall drop vs the champion, proven paired (default: 0.05)."
    ),
    fpr_tolerance: float | None = typer.Option(
        None, help="Non-inferiority margin: FPR increase vs the champion, proven paired (default: 0.03)."
    ),
    functionality_set: str | None = typer.Option(
        None, help="ImageFolder of clear cases of the model's own domain for the minimum-functionality test."
    ),
    gated_output: str | None = typer.Option(
        None, "--gated-output", help="Where to publish the gated bundle (default: OUTPUT/bundle)."
    ),
    max_p95_latency_ms: float | None = typer.Option(
        None, help="Latency budget, p95 at batch 1, ms (default: 1000)."
    ),
    max_model_mb: float | None = typer.Option(None, help="Model size budget on disk, MB (default: 200)."),
    max_memory_mb: float | None = typer.Option(
        None, help="Peak inference memory budget, MB (default: 2048)."
    ),
    min_throughput: float | None = typer.Option(
        None, help="Throughput floor, images/s at the best batch (default: 5)."
    ),
    device: str = typer.Option(
        "cpu", help="Evaluation device (cpu, cuda, cuda:1...); ops figures are measured on it."
    ),
    runtime: str = typer.Option(
        "torch",
        help="The artifact judged: torch (the weights), onnx or onnx-int8 (from `visionops package`).",
    ),
) -> None:
    """Evaluate BUNDLE on the golden set of MANIFEST, compare with --champion, and decide (exit 0 either way)."""
    from visionops.evaluation import GatePolicy, evaluate

    values = _load_policy_file(policy_file)
    overrides = {
        "target_precision": target_precision,
        "confidence": confidence,
        "interval": interval,
        "positive_class": positive_class,
        "recall_tolerance": recall_tolerance,
        "positive_prevalence": positive_prevalence,
        "fpr_tolerance": fpr_tolerance,
        "functionality_set": functionality_set,
        "max_p95_latency_ms": max_p95_latency_ms,
        "max_model_mb": max_model_mb,
        "max_memory_mb": max_memory_mb,
        "min_throughput": min_throughput,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    record = evaluate(
        bundle,
        manifest,
        output,
        champion_uri=champion,
        policy=GatePolicy.from_dict(values),
        device=device,
        runtime=runtime,
        gated_uri=gated_output,
    )
    _print_record(record, output, bundle)


def _print_record(record: dict, output: str, bundle: str) -> None:
    """The verdict, its reasons and rules, and where the outputs and the gated bundle went."""
    colour = typer.colors.GREEN if record["blessed"] else typer.colors.RED
    typer.secho(
        f"verdict: {record['verdict']} ({record['challenger']['model_version']} on golden set "
        f"{record['golden_version']})",
        fg=colour,
        bold=True,
    )
    challenger = record["challenger"]
    precision = challenger["golden_precision"]
    typer.echo(
        f"  golden precision {'n/a' if precision is None else f'{precision:.4f}'}, recall at target "
        f"precision {challenger['recall_at_target_precision']:.4f}, threshold {challenger['threshold']:.6g}"
    )
    for reason in record["reasons"]:
        typer.echo(f"  {reason}")
    for rule in record["rules"]:
        value = rule["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else str(value)
        typer.echo(f"  [{rule['status']:>7}] {rule['name']}: {shown} {rule['op']} {rule['limit']}")
    typer.echo(f"outputs: {output} (metrics.json, decision.json, model_card.md, model_card.html)")
    typer.echo(
        f"gated bundle: {record['gated_bundle']} (version {record['gated_model_version']}; the evaluated "
        f"bundle {bundle} is unchanged)"
    )


def register(app: typer.Typer) -> None:
    """Add ``visionops evaluate`` to the root app."""
    app.command(
        "evaluate",
        help="Evaluate a model bundle on the golden set and decide whether it replaces the "
        "champion (the promotion gate).",
    )(evaluate_command)
