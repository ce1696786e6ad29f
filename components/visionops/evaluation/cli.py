"""``visionops evaluate``: the promotion gate from the command line (a thin adapter over
:func:`visionops.evaluation.evaluate`)."""

from __future__ import annotations

from pathlib import Path

import typer

from visionops.settings import argument, option, options_command


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


def gate_policy(policy_file: Path | None, options: dict):
    """The :class:`GatePolicy` of a run: the options typed on the command line over the ``--policy`` file over
    the field defaults (checked once, by GatePolicy)."""
    from visionops.evaluation.gate import GatePolicy

    return GatePolicy.from_dict({**_load_policy_file(policy_file), **options})


def _evaluate(
    ctx: typer.Context,
    options: dict,
    *,
    bundle: str,
    manifest: str,
    output: str,
    champion: str | None,
    policy_file: Path | None,
    gated_output: str | None,
    device: str,
    runtime: str,
) -> None:
    """Evaluate BUNDLE on the golden set of MANIFEST, compare with --champion, and decide (exit 0 either way)."""
    policy = gate_policy(policy_file, options)  # a bad policy fails before any model is loaded
    from visionops.evaluation import evaluate

    record = evaluate(
        bundle,
        manifest,
        output,
        champion_uri=champion,
        policy=policy,
        device=device,
        runtime=runtime,
        gated_uri=gated_output,
    )
    _print_record(record, output, bundle)


def _evaluate_command():
    """``visionops evaluate``: the paths, then one option per GatePolicy field (:func:`options_command`), then
    where and how to run."""
    from visionops.evaluation.gate import GatePolicy

    before = [
        argument("bundle", str, help="Model bundle to evaluate (the challenger): local dir or s3:// URI."),
        argument(
            "manifest",
            str,
            help="Dataset (dir with manifest.csv + dataset.json): val picks the threshold, test is the golden set.",
        ),
        argument("output", str, help="Where to write metrics.json, decision.json, model_card.md/html."),
        option(
            "champion", str | None, None, "--champion", help="Bundle of the current champion to compare with."
        ),
        option(
            "policy_file",
            Path | None,
            None,
            "--policy",
            exists=True,
            dir_okay=False,
            help="YAML/JSON file of GatePolicy fields (the options below override it).",
        ),
    ]
    after = [
        option(
            "gated_output",
            str | None,
            None,
            "--gated-output",
            help="Where to publish the gated bundle (default: OUTPUT/bundle).",
        ),
        option(
            "device",
            str,
            "cpu",
            help="Evaluation device (cpu, cuda, cuda:1...); ops figures are measured on it.",
        ),
        option(
            "runtime",
            str,
            "torch",
            help="The artifact judged: torch (the weights), onnx or onnx-int8 (from `visionops package`).",
        ),
    ]
    return options_command(GatePolicy, _evaluate, before=before, after=after)


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
    )(_evaluate_command())
