"""Settings: one TOML file plus HOOKBUS_* environment overrides, decoded once into typed structs."""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from .sourceconfig import (
    ConfigError,
    GithubSource,
    JwtSource,
    Secret,
    SourceConfig,
    StandardWebhooksSource,
    looks_like_keys,
    standard_webhooks_key,
)

__all__ = [
    "ConfigError",
    "DatabaseSettings",
    "GithubSource",
    "LogSettings",
    "NatsSettings",
    "ReceiverSettings",
    "Secret",
    "Settings",
    "SourceConfig",
    "load_settings",
]

# Every struct forbids unknown fields so that a typo in the config file is an error that
# names the key instead of a setting that silently does nothing.
_STRUCT: dict[str, Any] = {"forbid_unknown_fields": True, "frozen": True, "kw_only": True}

PositiveInt = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
SubjectToken = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9_-]+$")]


class NatsSettings(msgspec.Struct, **_STRUCT):
    url: str = "nats://127.0.0.1:4222"
    # Retention of the bus stream; the event log in Postgres is the long-term record.
    stream_max_age_days: PositiveFloat = 7.0
    stream_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    duplicate_window_seconds: PositiveFloat = 120.0
    publish_timeout: PositiveFloat = 5.0
    connect_timeout: PositiveFloat = 30.0

    def __repr__(self) -> str:  # a URL may carry a password or token
        return f"NatsSettings(url={redact_url(self.url)!r})"


def redact_url(url: str) -> str:
    """The URL with any password replaced, for logs and reprs."""
    return re.sub(r"://[^/@]*@", "://***@", url)


class DatabaseSettings(msgspec.Struct, **_STRUCT):
    url: str = "postgresql://hookbus@127.0.0.1:5432/hookbus"
    schema: Annotated[str, msgspec.Meta(pattern=r"^[a-z_][a-z0-9_]{0,62}$")] = "hookbus"
    pool_min: Annotated[int, msgspec.Meta(ge=0)] = 1
    pool_max: PositiveInt = 10
    connect_timeout: PositiveFloat = 30.0

    def __repr__(self) -> str:  # a DSN may carry a password
        return f"DatabaseSettings(url={redact_url(self.url)!r}, schema={self.schema!r})"


class LogSettings(msgspec.Struct, **_STRUCT):
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    format: Literal["json", "text"] = "json"


class ReceiverSettings(msgspec.Struct, **_STRUCT):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: PositiveInt = 1024 * 1024
    # Group commit: rows are inserted together when this many wait or this time passes.
    commit_batch_size: PositiveInt = 64
    commit_interval_ms: Annotated[float, msgspec.Meta(ge=0)] = 2.0
    public_url: str | None = None
    workers: PositiveInt = 1


class ShellAction(msgspec.Struct, tag="shell", tag_field="kind", **_STRUCT):
    """Run a program as an argv list (never a shell string) with the event in env and stdin."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    env: dict[str, str] = {}
    timeout: PositiveFloat = 300.0
    payload: Literal["stdin", "file", "none"] = "stdin"
    cwd: str | None = None


class WebhookAction(msgspec.Struct, tag="webhook", tag_field="kind", **_STRUCT):
    """Send the event's payload to a URL through the dispatcher."""

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = {}


Action = ShellAction | WebhookAction


class Rule(msgspec.Struct, **_STRUCT):
    """Match a recorded webhook by source, event type, repository and branch globs."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]
    actions: Annotated[list[Action], msgspec.Meta(min_length=1)]
    source: str = "*"
    event: str = "*"
    repository: str = "*"
    branch: str = "*"
    enabled: bool = True


class RouterSettings(msgspec.Struct, **_STRUCT):
    # A separate TOML file of [[rules]], added to the rules of the main file.
    rules_file: str | None = None
    health_port: Port = 9101
    max_in_flight: PositiveInt = 64
    max_deliver: PositiveInt = 10
    # How long a fetched message may go unacknowledged before another replica gets it.
    ack_wait_seconds: PositiveFloat = 30.0


class ExecutorSettings(msgspec.Struct, **_STRUCT):
    health_port: Port = 9102
    max_in_flight: PositiveInt = 4
    max_deliver: PositiveInt = 5
    # Running jobs report progress, which restarts this timer.
    ack_wait_seconds: PositiveFloat = 60.0
    max_output_bytes: PositiveInt = 64 * 1024
    kill_grace_seconds: PositiveFloat = 5.0
    # Only these variables of the executor's own environment reach an action; the rest
    # (database URLs, tokens) stay out of scripts and their logs.
    inherit_env: list[str] = msgspec.field(
        default_factory=lambda: ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"]
    )
    workdir: str | None = None


class DispatcherSettings(msgspec.Struct, **_STRUCT):
    health_port: Port = 9103
    max_in_flight: PositiveInt = 32
    ack_wait_seconds: PositiveFloat = 30.0
    max_attempts: PositiveInt = 5
    timeout_seconds: PositiveFloat = 10.0


class Settings(msgspec.Struct, **_STRUCT):
    # Subject prefix and stream name: several installations can share one NATS cluster.
    prefix: SubjectToken = "hookbus"
    # Directory that relative paths in this file are resolved against (set by the loader).
    base_dir: str = "."
    nats: NatsSettings = NatsSettings()
    database: DatabaseSettings = DatabaseSettings()
    log: LogSettings = LogSettings()
    receiver: ReceiverSettings = ReceiverSettings()
    router: RouterSettings = RouterSettings()
    executor: ExecutorSettings = ExecutorSettings()
    dispatcher: DispatcherSettings = DispatcherSettings()
    sources: dict[Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")], SourceConfig] = {}
    rules: list[Rule] = []

    def resolve_path(self, path: str) -> Path:
        p = Path(path).expanduser()
        return p if p.is_absolute() else Path(self.base_dir) / p


ENV_PREFIX = "HOOKBUS_"
_PATH_RE = re.compile(r" - at `\$(?P<path>[^`]*)`$")


def _env_value(raw: str) -> Any:
    """Read an override as a TOML value when it is one (8080, true, ["a"]), else as text."""
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return raw


def _apply_env(data: dict[str, Any], env: Mapping[str, str]) -> None:
    # DATABASE_URL is the convention most hosts set; HOOKBUS_DATABASE__URL wins over it.
    if "DATABASE_URL" in env:
        data.setdefault("database", {})["url"] = env["DATABASE_URL"]
    known = set(Settings.__struct_fields__)
    for key in sorted(env):
        if not key.startswith(ENV_PREFIX):
            continue
        parts = key[len(ENV_PREFIX) :].lower().split("__")
        if parts[0] not in known:
            # HOOKBUS_CONFIG, or a variable of the user's own (a secret kept in
            # HOOKBUS_GITHUB_SECRET): not a setting.
            continue
        node = data
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"{key}: {'.'.join(parts)} is not a table")
            node = child
        node[parts[-1]] = _env_value(env[key])


def _readable_path(path: str) -> str:
    # msgspec says `$.receiver.port`; people write receiver.port.
    return path.removeprefix(".") or "(top level)"


def _convert(data: Any, typ: Any, label: str, at: str) -> Any:
    try:
        return msgspec.convert(data, typ)
    except msgspec.ValidationError as exc:
        msg = str(exc)
        m = _PATH_RE.search(msg)
        where = (at + (m["path"] if m else "")).removeprefix(".") or "(top level)"
        raise ConfigError(f"{label}: {where}: {_PATH_RE.sub('', msg)}") from None


def _resolve_secret(secret: Secret, where: str, base: Path, env: Mapping[str, str]) -> Secret:
    given = [k for k in ("value", "env", "file") if getattr(secret, k) is not None]
    if len(given) != 1:
        raise ConfigError(f"{where}: give exactly one of value, env or file")
    if secret.env is not None:
        if not env.get(secret.env):
            raise ConfigError(f"{where}: environment variable {secret.env} is not set or empty")
        return msgspec.structs.replace(secret, value=env[secret.env])
    if secret.file is not None:
        path = Path(secret.file) if Path(secret.file).is_absolute() else base / secret.file
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


def _resolve_source(name: str, src: SourceConfig, base: Path, env: Mapping[str, str]) -> Any:
    where = f"sources.{name}"
    for key, message in src.problems():
        raise ConfigError(f"{where}.{key}: {message}")
    lists = src.secret_lists()
    if src.needs_secrets() and not src.secrets:
        raise ConfigError(f"{where}.secrets: a {src.kind} source needs a secret")
    resolved = {
        key: [_resolve_secret(s, f"{where}.{key}[{i}]", base, env) for i, s in enumerate(secrets)]
        for key, secrets in lists.items()
    }
    if isinstance(src, StandardWebhooksSource):
        _check_standard_keys(f"{where}.secrets", resolved["secrets"])
    if isinstance(src, JwtSource):
        if isinstance(src.also, StandardWebhooksSource):
            _check_standard_keys(f"{where}.also.secrets", resolved["also.secrets"])
        also = resolved.pop("also.secrets", None)
        if src.also is not None and also is not None:
            src = msgspec.structs.replace(src, also=msgspec.structs.replace(src.also, secrets=also))
        src = _read_jwt_keys(where, src, base)
    elif "signing" in resolved:  # gitlab's signing token is a Standard Webhooks secret
        _check_standard_keys(f"{where}.signing", resolved["signing"])
    return msgspec.structs.replace(src, **resolved)


def _check_standard_keys(where: str, secrets: list[Secret]) -> None:
    for i, secret in enumerate(secrets):
        if standard_webhooks_key(secret.value or "") is None:
            # Never echo the secret itself.
            raise ConfigError(f"{where}[{i}]: not a Standard Webhooks secret (whsec_ + base64)")


def _read_jwt_keys(where: str, src: JwtSource, base: Path) -> JwtSource:
    text, key = src.keys, "keys"
    if src.key_file is not None:
        key = "key_file"
        path = Path(src.key_file).expanduser()
        path = path if path.is_absolute() else base / path
        try:
            text = path.read_text()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not text"
            raise ConfigError(f"{where}.key_file: cannot read {path}: {reason}") from None
    if text is not None and not looks_like_keys(text):
        raise ConfigError(f"{where}.{key}: expected PEM public keys or a JWKS document")
    # The file is read once, here; the receiver uses the text it was given.
    return msgspec.structs.replace(src, keys=text)


def _resolve_secrets(settings: Settings, env: Mapping[str, str]) -> Settings:
    base = Path(settings.base_dir)
    sources = {
        name: _resolve_source(name, src, base, env) for name, src in settings.sources.items()
    }
    return msgspec.structs.replace(settings, sources=sources)


def _check(settings: Settings) -> None:
    names = [r.name for r in settings.rules]
    for name in {n for n in names if names.count(n) > 1}:
        raise ConfigError(f"rules: the rule name {name!r} is used more than once")
    for i, rule in enumerate(settings.rules):
        if rule.source != "*" and "*" not in rule.source and rule.source not in settings.sources:
            raise ConfigError(f"rules[{i}].source: no source named {rule.source!r} is configured")


def _load_rules_file(data: dict[str, Any]) -> None:
    router = data.get("router")
    rules_file = router.get("rules_file") if isinstance(router, dict) else None
    if not isinstance(rules_file, str):
        return
    path = Path(rules_file)
    if not path.is_absolute():
        path = Path(data.get("base_dir", ".")) / path
    try:
        extra = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"router.rules_file: cannot read {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"router.rules_file: {path} is not valid TOML: {exc}") from None
    unknown = set(extra) - {"rules"}
    if unknown:
        raise ConfigError(
            f"router.rules_file: {path} may hold only [[rules]], not {sorted(unknown)}"
        )
    data["rules"] = [*data.get("rules", []), *extra.get("rules", [])]


def default_config_path(env: Mapping[str, str]) -> Path | None:
    if env.get("HOOKBUS_CONFIG"):
        return Path(env["HOOKBUS_CONFIG"])
    local = Path("hookbus.toml")
    return local if local.exists() else None


def load_settings(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> Settings:
    """Load the file (if any), apply environment overrides, validate, resolve secrets."""
    env = os.environ if env is None else env
    cfg_path = Path(path) if path is not None else default_config_path(env)
    data: dict[str, Any] = {}
    label = "environment"
    if cfg_path is not None:
        label = str(cfg_path)
        try:
            data = tomllib.loads(cfg_path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"{cfg_path}: config file not found") from None
        except OSError as exc:
            raise ConfigError(f"{cfg_path}: cannot read config: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
        data.setdefault("base_dir", str(cfg_path.resolve().parent))
    _apply_env(data, env)
    _load_rules_file(data)
    sources = data.get("sources")
    if isinstance(sources, dict):
        # msgspec writes a dict key as `[...]`; check each source alone so the error can
        # say which source it is about.
        for name, src in sources.items():
            _convert(src, SourceConfig, label, f"sources.{name}")
    settings = _convert(data, Settings, label, "")
    settings = _resolve_secrets(settings, env)
    try:
        _check(settings)
    except ConfigError as exc:
        raise ConfigError(f"{label}: {exc}") from None
    return settings
