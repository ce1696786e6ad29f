"""The one settings mechanism (visionops.settings): one dataclass drives env parsing, validation and CLI options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import typer
from typer.testing import CliRunner
from visionops.errors import ConfigError
from visionops.settings import Settings, env_vars, option, options_command, parse_json_object, setting


@dataclass(frozen=True)
class Demo(Settings):
    kind = "demo settings"

    url: str = setting("", "Where.", env="DEMO_URL", parse=lambda raw: raw.rstrip("/"), flags=("--url", "-u"))
    size: int = setting(10, "How many.", env="DEMO_SIZE", check=lambda v: v >= 2, must="must be >= 2")
    rate: float | None = setting(
        None, "Share.", env="DEMO_RATE", check=lambda v: 0 <= v <= 1, must="must be in [0, 1]"
    )
    mode: str = setting("a", "Mode.", env="DEMO_MODE", aliases=("DEMO_OLD_MODE",), choices=("a", "b"))
    dry: bool = setting(False, "Dry run.", env="DEMO_DRY", flags=("--dry/--no-dry",))
    params: dict[str, Any] = setting(default_factory=dict, help="JSON.", env="DEMO_PARAMS")  # noqa: RUF009
    names: tuple[str, ...] = setting(
        (),
        "Names.",
        env="DEMO_NAMES",
        parse=lambda raw: tuple(raw.split(",")),
        render=",".join,
        multiple=True,
        flags=("--name",),
    )
    hidden: int = setting(3, "Not on the CLI.", cli=False)


def test_from_env_parses_types_aliases_and_round_trips():
    env = {
        "DEMO_URL": "http://x:1/",
        "DEMO_SIZE": "7",
        "DEMO_RATE": "0.25",
        "DEMO_OLD_MODE": "b",
        "DEMO_DRY": "yes",
        "DEMO_PARAMS": '{"k": 1}',
        "DEMO_NAMES": "p,q",
    }
    s = Demo.from_env(env)
    assert (s.url, s.size, s.rate, s.mode, s.dry, s.params, s.names) == (
        "http://x:1",
        7,
        0.25,
        "b",
        True,
        {"k": 1},
        ("p", "q"),
    )
    assert Demo.from_env(s.to_env()) == s
    assert Demo.from_env({"DEMO_SIZE": "", "DEMO_RATE": "  "}) == Demo()  # empty = unset
    assert Demo.from_env(env, size=4, rate=None).size == 4 and Demo.from_env(env, rate=None).rate == 0.25
    assert env_vars(Demo)["DEMO_OLD_MODE"] == "mode" and "hidden" not in env_vars(Demo).values()


@pytest.mark.parametrize(
    "env,message",
    [
        ({"DEMO_SIZE": "many"}, "DEMO_SIZE='many' is not a valid int"),
        ({"DEMO_SIZE": "1"}, "DEMO_SIZE must be >= 2, got 1"),
        ({"DEMO_RATE": "1.5"}, r"DEMO_RATE must be in \[0, 1\], got 1.5"),
        ({"DEMO_MODE": "c"}, "DEMO_MODE 'c' unknown; valid: a, b"),
        ({"DEMO_DRY": "maybe"}, "DEMO_DRY='maybe' is not a valid bool"),
        ({"DEMO_PARAMS": "[1]"}, "DEMO_PARAMS must be a JSON object"),
    ],
)
def test_errors_name_the_variable_and_the_value(env, message):
    with pytest.raises(ConfigError, match=message):
        Demo.from_env(env)


def test_fields_without_variable_are_named_by_field_and_unknown_fields_are_refused():
    with pytest.raises(ConfigError, match="DEMO_SIZE must be >= 2"):
        Demo(size=0)
    with pytest.raises(ConfigError, match=r"unknown demo settings fields \['sise'\]; valid: .*size"):
        Demo.from_dict({"sise": 3})
    with pytest.raises(ValueError, match="must be a JSON object"):
        parse_json_object("3")
    with pytest.raises(ConfigError, match=r"DEMO_SIZE has the wrong type: '3' \(str\)"):
        Demo.from_dict({"size": "3"})


def _app(seen: list) -> typer.Typer:
    def run(ctx, options: dict, *, port: int) -> None:
        seen.append((Demo.from_env({"DEMO_SIZE": "5", "DEMO_MODE": "b"}, **options), port))

    app = typer.Typer()
    app.command("go")(options_command(Demo, run, after=[option("port", int, 80, "--port", help="Port.")]))
    app.command("other")(lambda: None)  # two commands: typer keeps "go" as a subcommand
    return app


def test_cli_options_are_generated_and_only_explicit_ones_beat_the_environment():
    seen: list = []
    runner = CliRunner()
    result = runner.invoke(
        _app(seen), ["go", "-u", "http://h/", "--dry", "--name", "x", "--name", "y", "--port", "9"]
    )
    assert result.exit_code == 0, result.output
    settings, port = seen[-1]
    # explicit options win; the environment (size=5, mode=b) beats the defaults shown in --help
    assert (settings.url, settings.dry, settings.names, settings.size, settings.mode, port) == (
        "http://h",
        True,
        ("x", "y"),
        5,
        "b",
        9,
    )
    result = runner.invoke(_app(seen), ["go", "--size", "20", "--params", '{"a": 2}'])
    assert result.exit_code == 0 and seen[-1][0].size == 20 and seen[-1][0].params == {"a": 2}
    result = runner.invoke(_app(seen), ["go", "--params", "[1]"])
    assert isinstance(result.exception, ConfigError) and "--params must be a JSON object" in str(
        result.exception
    )
    help_text = runner.invoke(_app(seen), ["go", "--help"]).output
    assert "DEMO_SIZE" in help_text and "--no-dry" in help_text and "--hidden" not in help_text


# -- the roles that use it ---------------------------------------------------------------------------------------
def test_router_settings_from_env_round_trip_and_equal_default_weights():
    from visionops.experiments.router import RouterSettings
    from visionops.policy import TARGET_PRECISION

    env = {
        "VISIONOPS_ROUTER_VARIANTS": "a=http://x:1/,b=http://y:2",
        "VISIONOPS_ROUTER_POLICY": "sticky",
        "VISIONOPS_ROUTER_LOG": "/tmp/log.jsonl",
    }
    s = RouterSettings.from_env(env)
    assert s.variants == {"a": "http://x:1", "b": "http://y:2"} and s.weights == {"a": 1.0, "b": 1.0}
    assert (s.policy, s.log_path, s.target_precision) == ("sticky", "/tmp/log.jsonl", TARGET_PRECISION)
    assert RouterSettings.from_env(s.to_env()) == s
    with pytest.raises(ConfigError, match="VISIONOPS_ROUTER_POLICY 'random' unknown; valid: weights, sticky"):
        RouterSettings.from_env({**env, "VISIONOPS_ROUTER_POLICY": "random"})
    with pytest.raises(ConfigError, match="VISIONOPS_ROUTER_WEIGHTS='a=many': bad weight"):
        RouterSettings.from_env({**env, "VISIONOPS_ROUTER_WEIGHTS": "a=many"})


def test_monitor_cli_options_override_the_environment(monkeypatch, tmp_path):
    from visionops.cli import app

    runner = CliRunner()
    monkeypatch.setenv("VISIONOPS_WINDOW_SIZE", "1")  # a bad value in the environment...
    result = runner.invoke(app, ["monitor", "--model", str(tmp_path / "none")])
    assert isinstance(result.exception, ConfigError)
    assert "VISIONOPS_WINDOW_SIZE must be a window size of at least 2 rows, got 1" in str(result.exception)
    # ... is overridden by the option: the settings pass, and the monitor fails later, on the missing bundle
    result = runner.invoke(app, ["monitor", "--model", str(tmp_path / "none"), "--window-size", "500"])
    assert result.exception is not None and "WINDOW_SIZE" not in str(result.exception)
    assert str(tmp_path / "none") in str(result.exception)


def test_s3_settings_read_aliases_keep_the_secret_out_of_repr_and_name_a_bad_endpoint():
    from visionops.storage import S3Settings

    s = S3Settings.from_env(
        {"AWS_ENDPOINT_URL": "minio:9000", "AWS_DEFAULT_REGION": "eu-1", "AWS_SECRET_ACCESS_KEY": "hunter2"}
    )
    assert (s.endpoint, s.secure, s.region, s.verify_tls, s.url) == (
        "minio:9000",
        True,
        "eu-1",
        True,
        "https://minio:9000",
    )
    assert "hunter2" not in repr(s) and s.secret_key == "hunter2"
    assert S3Settings.from_env(
        {"S3_ENDPOINT_URL": "http://h:1", "AWS_ENDPOINT_URL": "http://other:2"}
    ).url == ("http://h:1")
    assert S3Settings.from_env({"S3_VERIFY_TLS": "false"}).verify_tls is False
    assert S3Settings.from_env({}).url == "https://s3.amazonaws.com"
    with pytest.raises(ConfigError, match="S3_ENDPOINT_URL is not an http"):
        S3Settings.from_env({"S3_ENDPOINT_URL": "ftp://minio:21"})


def test_process_and_torchrun_variables_go_through_settings():
    """The variables every process reads (log level, image, commit) and torchrun's are parsed and checked by
    the one mechanism: a bad value names its variable."""
    from visionops.settings import ProcessSettings
    from visionops.training.distributed import LaunchSettings

    assert ProcessSettings.from_env({}).log_level == "INFO"
    assert ProcessSettings.from_env({"VISIONOPS_LOG_LEVEL": "debug"}).log_level == "DEBUG"
    with pytest.raises(ConfigError, match="VISIONOPS_LOG_LEVEL 'CHATTY' unknown"):
        ProcessSettings.from_env({"VISIONOPS_LOG_LEVEL": "chatty"})
    image = ProcessSettings.env_values({"VISIONOPS_IMAGE": "registry.internal/visionops:rc1"})
    assert image == {"image": "registry.internal/visionops:rc1"}
    launch = LaunchSettings.from_env(
        {"WORLD_SIZE": "2", "RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}
    )
    assert (launch.world_size, launch.rank, launch.local_rank, launch.master_port) == (2, 1, 0, "29500")
    with pytest.raises(ConfigError, match="WORLD_SIZE='two' is not a valid int"):
        LaunchSettings.from_env({"WORLD_SIZE": "two"})
    with pytest.raises(ConfigError, match="WORLD_SIZE must be >= 1"):
        LaunchSettings.from_env({"WORLD_SIZE": "0"})
