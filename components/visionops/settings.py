"""One settings mechanism: a frozen dataclass whose field metadata drives environment parsing, validation and
CLI options, so a role's variables, its ``--options`` and its checks can never drift apart.

Declare each field with :func:`setting` (default, help text, environment variable, check, CLI flags) and
derive the class from :class:`Settings`::

    @dataclass(frozen=True)
    class ServingSettings(Settings):
        max_batch_size: int = setting(32, "Adaptive batching: largest batch.", env="VISIONOPS_MAX_BATCH_SIZE",
                                      check=lambda v: 1 < v <= 4096, must="must be in 2..4096")

    ServingSettings.from_env()                   # reads VISIONOPS_MAX_BATCH_SIZE (unset or empty: the default)
    ServingSettings.from_env(max_batch_size=8)   # keyword overrides (not None) win over the environment
    settings.to_env()                            # the inverse: {"VISIONOPS_MAX_BATCH_SIZE": "8", ...}
    options_command(ServingSettings, run)        # a Typer command with one --option per field

Every error is a :class:`~visionops.errors.ConfigError` that names the variable (or the option, or the field)
and the bad value. Precedence everywhere: options given on the command line > a config file or preset (where
the command has one) > the environment > the field defaults.
"""

from __future__ import annotations

import inspect
import json
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from typing import Any, ClassVar, TypeVar

from visionops.errors import ConfigError

S = TypeVar("S", bound="Settings")

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


@dataclass(frozen=True)
class Spec:
    """What one setting field declares beyond its type and default (kept in the field's metadata)."""

    help: str
    #: the environment variable; None = the field is not read from the environment
    env: str | None = None
    #: further variables read, in order, when ``env`` is unset or empty (e.g. AWS_DEFAULT_REGION)
    aliases: tuple[str, ...] = ()
    #: predicate on the value (None values are not checked), and what it requires ("must be >= 1")
    check: Callable[[Any], bool] | None = None
    must: str = ""
    #: the valid values of a string setting
    choices: tuple[str, ...] = ()
    #: text -> value for types the CLI and environment give as text (JSON objects, lists); raises ValueError
    #: with a phrase such as "must be a JSON object"
    parse: Callable[[str], Any] | None = None
    #: value -> text (the inverse of ``parse``, used by ``to_env``)
    render: Callable[[Any], str] | None = None
    #: CLI declarations, e.g. ("--model", "-m"); empty = ``--field-name`` (and ``--no-field-name`` for bools)
    flags: tuple[str, ...] = ()
    #: False: no CLI option for this field
    cli: bool = True
    #: a repeatable CLI option whose values are joined with "," and parsed like the environment variable
    multiple: bool = False
    #: a credential: left out of repr() (logs, tracebacks)
    secret: bool = False


def setting(
    default: Any = MISSING,
    help: str = "",
    *,
    default_factory: Callable[[], Any] | Any = MISSING,
    env: str | None = None,
    aliases: Sequence[str] = (),
    check: Callable[[Any], bool] | None = None,
    must: str = "",
    choices: Sequence[str] = (),
    parse: Callable[[str], Any] | None = None,
    render: Callable[[Any], str] | None = None,
    flags: Sequence[str] = (),
    cli: bool = True,
    multiple: bool = False,
    secret: bool = False,
) -> Any:
    """A dataclass field carrying its :class:`Spec` (and its help text under ``metadata["help"]``)."""
    spec = Spec(
        help=help,
        env=env,
        aliases=tuple(aliases),
        check=check,
        must=must,
        choices=tuple(choices),
        parse=parse,
        render=render,
        flags=tuple(flags),
        cli=cli,
        multiple=multiple,
        secret=secret,
    )
    metadata = {"setting": spec, "help": help}
    if default_factory is not MISSING:
        return field(default_factory=default_factory, metadata=metadata, repr=not secret)
    return field(default=default, metadata=metadata, repr=not secret)


def spec_of(f) -> Spec:
    """The :class:`Spec` of a dataclass field (a plain field gets an empty one)."""
    return f.metadata.get("setting") or Spec(help=f.metadata.get("help", ""))


class Settings:
    """Base of every settings dataclass: validation on construction, ``from_env``/``to_env``, ``from_dict``.

    Subclasses are ``@dataclass(frozen=True)``; a subclass with cross-field rules defines ``__post_init__``
    and calls ``super().__post_init__()`` first.
    """

    #: how errors about unknown fields name this kind of settings
    kind: ClassVar[str] = "settings"

    def __post_init__(self) -> None:
        for f in fields(self):  # type: ignore[arg-type]
            check_value(f, getattr(self, f.name))

    @classmethod
    def env_values(cls, env: Mapping[str, str] | None = None) -> dict[str, Any]:
        """The fields the environment sets (unset or empty variables are left out), parsed and typed."""
        env = os.environ if env is None else env
        hints = typing.get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):  # type: ignore[arg-type]
            spec = spec_of(f)
            if spec.env is None:
                continue
            for var in (spec.env, *spec.aliases):
                raw = env.get(var, "").strip()
                if raw:
                    values[f.name] = parse_text(var, raw, hints[f.name], spec)
                    break
        return values

    @classmethod
    def from_env(cls: type[S], env: Mapping[str, str] | None = None, **overrides: Any) -> S:
        """Settings from the environment (``os.environ`` by default); ``overrides`` that are not None win."""
        values = cls.env_values(env)
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)

    def to_env(self) -> dict[str, str]:
        """The inverse of :meth:`from_env`: every field with a variable, as text (None -> "")."""
        out = {}
        for f in fields(self):  # type: ignore[arg-type]
            spec = spec_of(f)
            if spec.env is not None:
                out[spec.env] = render_text(getattr(self, f.name), spec)
        return out

    @classmethod
    def from_dict(cls: type[S], data: Mapping[str, Any]) -> S:
        """Build from a mapping of field values (YAML, KFP parameters, a saved config); unknown keys are refused."""
        known = [f.name for f in fields(cls)]  # type: ignore[arg-type]
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise ConfigError(f"unknown {cls.kind} fields {unknown}; valid: {', '.join(sorted(known))}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ConfigError(f"bad {cls.kind}: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]

    def replace(self: S, **changes: Any) -> S:
        return replace(self, **changes)  # type: ignore[type-var]


def env_vars(cls: type) -> dict[str, str]:
    """Environment variable -> field name, for every field of ``cls`` that has one (aliases included)."""
    out = {}
    for f in fields(cls):
        spec = spec_of(f)
        for var in (spec.env, *spec.aliases) if spec.env else ():
            out[var] = f.name
    return out


# -- values: text -> typed value, checks ------------------------------------------------------------------------
def _base_type(hint: Any) -> Any:
    """``int | None`` -> int; other hints unchanged."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) == 1:
            return args[0]
    return hint


def parse_text(label: str, raw: str, hint: Any, spec: Spec) -> Any:
    """Text from an environment variable (or a text CLI option) -> the field's value; errors name ``label``."""
    if spec.parse is not None:
        try:
            return spec.parse(raw)
        except ValueError as exc:
            raise ConfigError(f"{label} {exc} (got {raw!r})") from exc
        except ConfigError as exc:  # a parser of the library's own (parse_weights...) already explains itself
            raise ConfigError(f"{label}={raw!r}: {exc}") from exc
    kind = _base_type(hint)
    if kind is bool:
        if raw.lower() in _TRUE + _FALSE:
            return raw.lower() in _TRUE
        raise ConfigError(f"{label}={raw!r} is not a valid bool (true/false, 1/0, yes/no, on/off)")
    if kind in (int, float):
        try:
            return kind(raw)
        except ValueError as exc:
            raise ConfigError(f"{label}={raw!r} is not a valid {kind.__name__}") from exc
    if typing.get_origin(kind) is dict or kind is dict:
        return _json_object(label, raw)
    return raw


def _json_object(label: str, raw: str) -> dict:
    try:
        return parse_json_object(raw)
    except ValueError as exc:
        raise ConfigError(f"{label} {exc} (got {raw!r})") from exc


def parse_json_object(raw: str) -> dict:
    """``'{"a": 1}'`` -> ``{"a": 1}``; anything else raises ValueError("must be a JSON object ...")."""
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValueError(f"must be a JSON object ({exc})") from exc
    if not isinstance(value, dict):
        raise ValueError('must be a JSON object, e.g. {"data_uri": "s3://data/v2"}')
    return value


def render_text(value: Any, spec: Spec) -> str:
    """A field value as environment text (what :func:`parse_text` reads back)."""
    if value is None:
        return ""
    if spec.render is not None:
        return spec.render(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return json.dumps(value, sort_keys=True)
    return str(value)


def check_value(f, value: Any) -> None:
    """Raise ConfigError when ``value`` breaks the field's choices or check; the message names the setting."""
    spec = spec_of(f)
    if value is None:
        return
    label = spec.env or f.name
    if spec.choices and value not in spec.choices:
        raise ConfigError(f"{label} {value!r} unknown; valid: {', '.join(spec.choices)}")
    try:
        ok = spec.check is None or spec.check(value)
    except TypeError as exc:  # e.g. "3" from a YAML file compared with a number
        raise ConfigError(f"{label} has the wrong type: {value!r} ({type(value).__name__})") from exc
    if not ok:
        raise ConfigError(f"{label} {spec.must or 'is out of range'}, got {value!r}")


# -- settings every process shares -----------------------------------------------------------------------------
_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


@dataclass(frozen=True)
class ProcessSettings(Settings):
    """What any visionops process (the CLI, a pipeline step) reads from its environment besides its role's
    settings: the log level, the image pipeline steps run, the commit of the code (images built without .git).
    """

    kind: ClassVar[str] = "process settings"

    log_level: str = setting(
        "INFO", "Log level.", env="VISIONOPS_LOG_LEVEL", choices=_LOG_LEVELS, parse=str.upper, cli=False
    )
    image: str = setting(
        "", "Image of every pipeline step (empty: visionops.DEFAULT_IMAGE).", env="VISIONOPS_IMAGE", cli=False
    )
    git_commit: str = setting("", "The code's git commit.", env="VISIONOPS_GIT_COMMIT", cli=False)


# -- the command line -------------------------------------------------------------------------------------------
def _flag(f) -> str:
    return "--" + f.name.replace("_", "-")


def _cli_native(kind: Any) -> bool:
    return kind in (str, int, float, bool)


def option_parameters(cls: type, *, exclude: Sequence[str] = ()) -> list[inspect.Parameter]:
    """One keyword-only Typer option per CLI field of ``cls``: type, default and help from the field.

    Non-native types (JSON objects, lists) are text options parsed like their environment variable; the
    variable's name is appended to the help text so ``--help`` documents both ways to set a value.
    """
    import typer

    hints = typing.get_type_hints(cls)
    params = []
    for f in fields(cls):
        spec = spec_of(f)
        if not spec.cli or f.name in exclude:
            continue
        kind = _base_type(hints[f.name])
        default = None if f.default is MISSING else f.default
        if spec.multiple:
            annotation: Any = list[str] | None
            default = None
        elif _cli_native(kind):
            annotation = hints[f.name] if default is not None or kind is bool else kind | None
        else:
            annotation, default = str | None, None
        decls = list(spec.flags) or ([f"{_flag(f)}/--no-{_flag(f)[2:]}"] if kind is bool else [_flag(f)])
        help_text = spec.help + (f" (env {spec.env})" if spec.env else "")  # no [...]: rich markup
        option = typer.Option(default, *decls, help=help_text, show_default=default is not None)
        params.append(
            inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=option)
        )
    return params


def explicit_options(cls: type, ctx: Any, values: Mapping[str, Any]) -> dict[str, Any]:
    """The options the user typed (not their defaults), converted to field values.

    Typed options are the explicit layer of every precedence chain; defaults shown in ``--help`` never
    override the environment or a config file.
    """
    hints = typing.get_type_hints(cls)
    by_name = {f.name: f for f in fields(cls)}
    out: dict[str, Any] = {}
    for name, value in values.items():
        source = ctx.get_parameter_source(name)
        # compared by name: Typer may ship its own copy of click's ParameterSource enum
        if name not in by_name or source is None or source.name in ("DEFAULT", "DEFAULT_MAP"):
            continue
        f, spec = by_name[name], spec_of(by_name[name])
        label = (spec.flags or (_flag(f),))[0].split("/")[0]
        if spec.multiple:
            value = parse_text(label, ",".join(value), hints[name], spec)
        elif isinstance(value, str) and (spec.parse or not _cli_native(_base_type(hints[name]))):
            value = parse_text(label, value, hints[name], spec)
        out[name] = value
    return out


def options_command(
    cls: type,
    run: Callable[..., None],
    *,
    before: Sequence[inspect.Parameter] = (),
    after: Sequence[inspect.Parameter] = (),
    exclude: Sequence[str] = (),
    doc: str | None = None,
) -> Callable[..., None]:
    """A Typer command function: the ``before`` parameters, one option per field of ``cls``, then ``after``.

    Typer calls it with every parameter; it calls ``run(ctx, options, **others)`` where ``options`` holds only
    the settings options given explicitly (:func:`explicit_options`) and ``others`` the extra parameters.
    """
    import typer

    ctx_param = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)
    setting_params = option_parameters(cls, exclude=exclude)
    names = {p.name for p in setting_params}

    def command(ctx, **kwargs):  # no annotations: Typer reads the types from __signature__
        options = explicit_options(cls, ctx, {k: v for k, v in kwargs.items() if k in names})
        run(ctx, options, **{k: v for k, v in kwargs.items() if k not in names})

    command.__signature__ = inspect.Signature([ctx_param, *before, *setting_params, *after])  # type: ignore[attr-defined]
    command.__doc__ = doc or run.__doc__
    return command


def argument(name: str, annotation: Any, **kwargs: Any) -> inspect.Parameter:
    """A keyword-only ``typer.Argument`` parameter for :func:`options_command`'s ``before``/``after``."""
    import typer

    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=typer.Argument(..., **kwargs)
    )


def option(name: str, annotation: Any, default: Any, *decls: str, **kwargs: Any) -> inspect.Parameter:
    """A keyword-only ``typer.Option`` parameter for :func:`options_command`'s ``before``/``after``."""
    import typer

    return inspect.Parameter(
        name,
        inspect.Parameter.KEYWORD_ONLY,
        annotation=annotation,
        default=typer.Option(default, *decls, **kwargs),
    )
