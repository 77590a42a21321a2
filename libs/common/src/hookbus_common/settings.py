"""Settings: one TOML file for an installation plus HOOKBUS_* environment overrides.

The file holds every service's sections, but each service decodes only the shared core
(prefix, nats, database, log) and its own sections, and resolves only the secrets it uses:
a service never holds another service's secrets and never refuses to start over another
service's settings. A service's config is a subclass of :class:`Settings` that adds its
sections; :func:`load` decodes any of them. A secret setting is a :class:`Secret`, which
the service that uses it reads with :func:`resolve_secret` once its config is loaded.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal, TypeVar

import msgspec

from .errors import ConfigError

__all__ = [
    "ConfigError",
    "DatabaseSettings",
    "LogSettings",
    "NatsSettings",
    "Secret",
    "Settings",
    "TracingSettings",
    "load",
    "resolve_secret",
]

# Every struct forbids unknown fields so that a typo in the config file is an error that
# names the key instead of a setting that silently does nothing.
STRUCT: Final[dict[str, Any]] = {"forbid_unknown_fields": True, "frozen": True, "kw_only": True}

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
NonNegativeFloat = Annotated[float, msgspec.Meta(ge=0)]
HeaderName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")]
"""An HTTP header's name (RFC 9110's token characters)."""
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
SubjectToken = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]+$")]

# The top-level keys an installation's file may hold. Each service decodes the core and
# its own; the others are known here only so that a misspelt section is still an error.
SECTIONS: Final = frozenset(
    {
        "prefix",
        "base_dir",
        "nats",
        "database",
        "log",
        "receiver",
        "sources",
        "router",
        "rules",
        "executor",
        "dispatcher",
        "projects",
        "endpoints",
        "notifications",
        "api",
        "tracing",
    }
)


class NatsSettings(msgspec.Struct, **STRUCT):
    # One server, or several separated by commas (a cluster's servers: the client fails
    # over between them).
    url: str = "nats://127.0.0.1:4222"
    # Retention of the bus stream; the event log in Postgres is the long-term record.
    stream_max_age_days: PositiveFloat = 7.0
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window_seconds: PositiveFloat = 120.0
    publish_timeout: PositiveFloat = 5.0
    connect_timeout: PositiveFloat = 30.0

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("url: no server given (nats://host:4222; several: comma-separated)")

    @property
    def servers(self) -> list[str]:
        """The servers ``url`` names, for a client to connect to (and fail over between)."""
        return [u.strip() for u in self.url.split(",") if u.strip()]

    def __repr__(self) -> str:  # a URL may carry a password or token
        return f"NatsSettings(url={redact_url(self.url)!r})"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and reprs."""
    return re.sub(r"://[^/@]*@", "://***@", url)


class DatabaseSettings(msgspec.Struct, **STRUCT):
    url: str = "postgresql://hookbus@127.0.0.1:5432/hookbus"
    schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "hookbus"
    pool_min: Annotated[int, msgspec.Meta(ge=0)] = 1
    pool_max: PositiveInt = 10
    connect_timeout: PositiveFloat = 30.0

    def __repr__(self) -> str:  # a DSN may carry a password
        return f"DatabaseSettings(url={redact_url(self.url)!r}, schema={self.schema!r})"


class Secret(msgspec.Struct, **STRUCT):
    """A secret given inline, by environment variable or by file; resolved once at load
    (:func:`resolve_secret`), after which ``value`` holds it whichever way it was given."""

    value: str | None = None
    env: str | None = None
    file: str | None = None

    def __repr__(self) -> str:  # secrets must never reach a log through a repr
        where = (
            f"env={self.env!r}" if self.env else f"file={self.file!r}" if self.file else "inline"
        )
        return f"Secret({where}, value=<redacted>)"

    __str__ = __repr__


SecretT = TypeVar("SecretT", bound=Secret)


def resolve_secret(
    secret: SecretT,
    where: str,
    base: Path,
    env: Mapping[str, str],
    *,
    trim_env: bool = False,
) -> SecretT:
    """``secret`` with ``value`` read from its variable (trimmed with ``trim_env``) or file
    (trimmed), or as given.

    ``where`` is its key (``sources.gh.secrets[0]``), which every error names; a relative
    file is found under ``base`` (the config file's directory). No error shows the value.
    """
    given = [k for k in ("value", "env", "file") if getattr(secret, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of value, env or file")
    if secret.env is not None:
        if not env.get(secret.env):
            raise ConfigError(f"{where}: environment variable {secret.env} is not set or empty")
        value = env[secret.env]
        return msgspec.structs.replace(secret, value=value.strip() if trim_env else value)
    if secret.file is not None:
        path = Path(secret.file).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"{where}: cannot read secret file {path}: {exc.strerror}") from None
        if not text:
            raise ConfigError(f"{where}: secret file {path} is empty")
        return msgspec.structs.replace(secret, value=text)
    if not secret.value:
        raise ConfigError(f"{where}: secret value is empty")
    return secret


class LogSettings(msgspec.Struct, **STRUCT):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class TracingSettings(msgspec.Struct, **STRUCT):
    """OpenTelemetry traces, exported over OTLP/HTTP; off (nothing made, nothing sent)
    unless ``endpoint`` is set."""

    # The collector's OTLP/HTTP base URL (http://otel-collector:4318); spans go to
    # <endpoint>/v1/traces.
    endpoint: str | None = None
    # The share of webhooks whose traces are recorded (0 to 1); a trace that came in with
    # a sampled ``traceparent`` is recorded whatever the ratio, like its parent.
    sample_ratio: Annotated[float, msgspec.Meta(ge=0, le=1)] = 1.0
    # Extra HTTP headers sent to the collector (an API key of a hosted backend).
    headers: dict[str, str] = {}
    export_timeout: PositiveFloat = 10.0

    def __post_init__(self) -> None:
        if self.endpoint is not None and not re.match(r"^https?://[^/\s]+", self.endpoint):
            raise ValueError("endpoint: not an http(s) URL (http://otel-collector:4318)")

    def __repr__(self) -> str:  # headers may carry an API key
        endpoint = None if self.endpoint is None else redact_url(self.endpoint)
        return f"TracingSettings(endpoint={endpoint!r}, sample_ratio={self.sample_ratio!r})"


class Settings(msgspec.Struct, **STRUCT):
    """The core every process shares; a service's config subclasses it with its sections."""

    # Subject prefix and stream name: several installations can share one NATS cluster.
    prefix: SubjectToken = "hookbus"
    # Directory that relative paths in this file are resolved against (set by the loader).
    base_dir: str = "."
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
    log: LogSettings = LogSettings()
    tracing: TracingSettings = TracingSettings()

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


S = TypeVar("S", bound=Settings)
T = TypeVar("T", bound=Settings)


def extend(settings: Settings, cls: type[T], **sections: Any) -> T:
    """``settings``'s core as a ``cls`` (a service's config) with the given sections."""
    core = {name: getattr(settings, name) for name in Settings.__struct_fields__}
    return cls(**core, **sections)


ENV_PREFIX = "HOOKBUS_"
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _env_value(raw: str) -> Any:
    """Read an override as a TOML value when it is one (8080, true, ["a"]), else as text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str], known: frozenset[str]) -> None:
    # DATABASE_URL is the convention most hosts set; HOOKBUS_DATABASE__URL wins over it.
    if "DATABASE_URL" in env:
        data.setdefault("database", {})["url"] = env["DATABASE_URL"]
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in known:
            # HOOKBUS_CONFIG, another service's setting, or a variable of the user's own
            # (a secret kept in HOOKBUS_GITHUB_SECRET): not this process's setting.
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {'.'.join(parts)} is not a table")
            node = child
        node[parts[-1]] = _env_value(env[key])


def convert(data: Any, typ: Any, label: str, at: str) -> Any:
    """``msgspec.convert`` whose error names the file and the key (``receiver.port``)."""
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_RE.search(msg)
        where = (at + (m["path"] if m else "")).removeprefix(".") or "(top level)"
        raise ConfigError(f"{label}: {where}: {_PATH_RE.sub('', msg)}") from None


def default_config_path(env: Mapping[str, str]) -> Path | None:
    if env.get("HOOKBUS_CONFIG"):
        return Path(env["HOOKBUS_CONFIG"])
    local = Path("hookbus.toml")
    return local if local.exists() else None


def read_file(path: str | Path | None, env: Mapping[str, str]) -> tuple[dict[str, Any], str]:
    """The config file's tables (empty without a file) and a label for error messages."""
    cfg_path = Path(path) if path is not None else default_config_path(env)
    if cfg_path is None:
        return {}, "environment"
    try:
        data = tomllib.loads(cfg_path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{cfg_path}: config file not found") from None
    except OSError as exc:
        raise ConfigError(f"{cfg_path}: cannot read config: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    data.setdefault("base_dir", str(cfg_path.resolve().parent))
    return data, str(cfg_path)


Prepare = Callable[[dict[str, Any], str], None]


def load(
    cls: type[S],
    path: str | Path | None = None,
    env: Mapping[str, str] | None = None,
    *,
    prepare: Prepare | None = None,
) -> S:
    """Decode the core and ``cls``'s own sections of the file (if any) and environment.

    ``prepare`` sees the whole file's tables first (after environment overrides), to add
    what a service derives from them (the router's rules file); sections ``cls`` does not
    declare are then dropped unread, so another service's secrets are never resolved here.
    """
    env = os.environ if env is None else env
    data, label = read_file(path, env)
    unknown = sorted(set(data) - SECTIONS)
    if unknown:
        raise ConfigError(f"{label}: {unknown[0]}: not a known section or setting")
    own = frozenset(cls.__struct_fields__)
    _apply_env(data, env, own)
    if prepare is not None:
        prepare(data, label)
    return convert({k: v for k, v in data.items() if k in own}, cls, label, "")  # type: ignore[no-any-return]
