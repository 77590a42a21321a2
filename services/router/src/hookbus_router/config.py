"""The router's config: its ``[router]`` section and the rules, with the actions they request.

The router reads the names of the configured sources (to check what a rule names), never
their contents: their secrets are the receiver's alone.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.events import ConcurrencyStrategy, OnInterrupt
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt

from . import projects as projects_
from .projects import Project
from .rules import compile_rule

# Sources that exist without a [sources.*] table: the image-push URL, and partners, whose
# webhooks are recorded under their partner id (ptn_…).
IMAGE_PUSH_SOURCE: Final = "image-push"
PARTNER_SOURCE_PREFIX: Final = "ptn_"


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def seconds(value: str | float, field: str) -> float:
    """A duration ("500ms", "1s", "1m", "2h", "1d", or a number of seconds) in seconds;
    ConfigError naming ``field`` otherwise."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise ConfigError(f"{field}: {value!r} is negative")
        return float(value)
    m = _DURATION.match(str(value))
    if m is None:
        raise ConfigError(f'{field}: {value!r} is not a duration (like "1s", "5m", "1h")')
    return float(m.group(1)) * _UNIT[m.group(2) or "s"]


class ActionConcurrency(msgspec.Struct, **STRUCT):
    """Jobs whose rendered ``key`` (a template) is the same run by ``strategy``: one at a
    time in order (``queue``), only the newest waiting one next (``latest``), the new one
    stopping the running one (``cancel-running``), or with no limit (``parallel``)."""

    key: Annotated[str, msgspec.Meta(min_length=1, max_length=512)]
    strategy: ConcurrencyStrategy = "parallel"


class ActionBackoff(msgspec.Struct, **STRUCT):
    """The wait before a failed run's next attempt: ``base``, doubled each attempt, at
    most ``max`` (durations: "1s", "1m", or seconds)."""

    base: str | float = "1s"
    max: str | float = "1m"


class ShellAction(msgspec.Struct, tag="shell", tag_field="kind", **STRUCT):
    """Run a program as an argv list (never a shell string) with the event in env and stdin."""

    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    env: dict[str, str] = {}
    timeout: PositiveFloat = 300.0
    payload: Literal["stdin", "file", "none"] = "stdin"
    cwd: str | None = None
    # A run whose end is unknown (its executor died mid-way) is recorded as interrupted
    # and not run again ("record"), or run again as the next attempt ("retry": only for
    # actions that are safe to repeat).
    on_interrupt: OnInterrupt = "record"
    # Jobs whose rendered concurrency key is the same run by its strategy (docs/jobs.md).
    concurrency: ActionConcurrency | None = None
    # A failed run is run again up to ``retries`` times, ``backoff`` apart.
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    backoff: ActionBackoff | None = None


class WebhookAction(msgspec.Struct, tag="webhook", tag_field="kind", **STRUCT):
    """Send the event's payload through the dispatcher to a URL, to a configured endpoint
    by name, or (``endpoints = "subscribed"``) to every endpoint of the event's tenant
    subscribed to its event type (exactly one of the three)."""

    url: str | None = None
    endpoint: str | None = None
    endpoints: Literal["subscribed"] | None = None
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    headers: dict[str, str] = {}


class SshAction(msgspec.Struct, tag="ssh", tag_field="kind", **STRUCT):
    """Run a command (an argv list, quoted for the remote shell) on an SSH host the
    executor's config names; the router knows the host's name only."""

    host: str
    command: Annotated[list[str], msgspec.Meta(min_length=1)]
    env: dict[str, str] = {}
    timeout: PositiveFloat = 300.0
    payload: Literal["stdin", "none"] = "stdin"
    on_interrupt: OnInterrupt = "record"
    # Jobs whose rendered concurrency key is the same run by its strategy (docs/jobs.md).
    concurrency: ActionConcurrency | None = None
    # A failed run is run again up to ``retries`` times, ``backoff`` apart.
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    backoff: ActionBackoff | None = None


class HealthCheck(msgspec.Struct, **STRUCT):
    """hookbus's own health probe of a redeployed container: exactly one of ``http`` (a
    URL answering 2xx/3xx) and ``tcp`` (a port on 127.0.0.1, or host:port)."""

    http: str | None = None
    tcp: str | int | None = None
    timeout: PositiveFloat = 60.0
    interval: PositiveFloat = 1.0


class DockerAction(msgspec.Struct, tag="docker", tag_field="kind", **STRUCT):
    """One operation on the executor's Docker engine (see docs/actions.md): pull an
    image; recreate, restart or stop a container; run a one-off container."""

    operation: Literal["pull", "recreate", "restart", "run", "stop"]
    container: str | None = None
    image: str | None = None
    command: list[str] | None = None
    env: dict[str, str] = {}
    timeout: PositiveFloat = 300.0
    pull: Literal["missing", "always", "never"] = "missing"
    health: HealthCheck | None = None
    stop_timeout: Annotated[int, msgspec.Meta(ge=0)] = 10
    on_interrupt: OnInterrupt = "record"
    # Jobs whose rendered concurrency key is the same run by its strategy (docs/jobs.md).
    concurrency: ActionConcurrency | None = None
    # A failed run is run again up to ``retries`` times, ``backoff`` apart.
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    backoff: ActionBackoff | None = None


class ComposeAction(msgspec.Struct, tag="compose", tag_field="kind", **STRUCT):
    """``up -d`` (or ``pull``) of chosen services of a compose project on the executor's
    engine, with ``env`` for the compose file's variables."""

    file: str
    project: Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]*$")]
    operation: Literal["pull", "up"] = "up"
    services: list[str] = []
    env: dict[str, str] = {}
    timeout: PositiveFloat = 600.0
    pull: Literal["missing", "always", "never"] = "missing"
    wait: bool = False
    on_interrupt: OnInterrupt = "record"
    # Jobs whose rendered concurrency key is the same run by its strategy (docs/jobs.md).
    concurrency: ActionConcurrency | None = None
    # A failed run is run again up to ``retries`` times, ``backoff`` apart.
    retries: Annotated[int, msgspec.Meta(ge=0, le=100)] = 0
    backoff: ActionBackoff | None = None


class NotifyAction(msgspec.Struct, tag="notify", tag_field="kind", **STRUCT):
    """Tell a channel of the dispatcher's [notifications.*] (Slack, Discord, email, JSON)
    about the event; the router knows the channel's name only."""

    channel: str


Action = ShellAction | WebhookAction | SshAction | DockerAction | ComposeAction | NotifyAction


class RuleEvent(msgspec.Struct, **STRUCT):
    """One of the events a multi-event rule waits for ([[rules.events]]): the same
    one-line filters and ``when`` as a rule's (see waits.py)."""

    source: str | list[str] = "*"
    event: str | list[str] = "*"
    repository: str | list[str] = "*"
    branch: str | list[str] = "*"
    when: dict[str, Any] | None = None


class Rule(msgspec.Struct, **STRUCT):
    """Match a recorded webhook by source, event type, repository and branch globs (each a
    glob or a list of globs, any of which may match) and an optional ``when`` condition
    (see conditions.py and docs/rules.md)."""

    name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]
    actions: Annotated[list[Action], msgspec.Meta(min_length=1)]
    source: str | list[str] = "*"
    event: str | list[str] = "*"
    repository: str | list[str] = "*"
    branch: str | list[str] = "*"
    enabled: bool = True
    when: dict[str, Any] | None = None
    # A multi-event rule: it fires when one event of each of ``events`` arrived with the
    # same ``key`` (a template) within ``window`` ("90s", "30m", "1h", "2d" or seconds).
    events: list[RuleEvent] = []
    key: str | None = None
    window: str | float | None = None
    # Run the actions one after another, each only when the one before succeeded.
    sequence: bool = False


class RouterSettings(msgspec.Struct, **STRUCT):
    # A separate TOML file of [[rules]], added to the rules of the main file.
    rules_file: str | None = None
    health_port: Port = 9101
    max_in_flight: PositiveInt = 64
    max_deliver: PositiveInt = 10
    # How long a fetched message may go unacknowledged before another replica gets it.
    ack_wait_seconds: PositiveFloat = 30.0
    # Record a webhook.routed event for webhooks no rule matches (the rules each missed
    # on). Off: such a webhook costs the router no write at all.
    record_unmatched: bool = False
    # How often each router looks for multi-event waits whose window passed.
    wait_sweep_seconds: PositiveFloat = 5.0


class RouterConfig(core.Settings, **STRUCT):
    router: RouterSettings = RouterSettings()
    rules: list[Rule] = []
    # Image pushes redeploy these projects' stages ([projects.<name>]; projects.py).
    projects: dict[str, Project] = {}
    # [projects] auto_create (and auto_stage, auto_health_timeout): projects made from
    # images no project names (set by the loader from the [projects] table's plain keys).
    auto_projects: projects_.AutoCreate = projects_.AutoCreate()
    # The names of the [sources.*] tables (set by the loader from the file; never their
    # contents).
    source_names: list[str] = []
    # The names of the [endpoints.*] tables, likewise (their secrets are the dispatcher's).
    endpoint_names: list[str] = []
    # The names of the [notifications.*] tables, likewise (their URLs are the dispatcher's).
    notification_names: list[str] = []
    # The names of the [executor.ssh.hosts.*] tables, likewise (their keys are the
    # executor's).
    ssh_host_names: list[str] = []
    # The file this config was read from (set by the loader; None without one): what a
    # reload of the rules reads again.
    config_file: str | None = None


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


def _auto_projects(data: dict[str, Any]) -> None:
    """Move ``[projects]``'s own keys (``auto_create``, ``auto_*``), which are not projects,
    to ``auto_projects``."""
    projects = data.get("projects")
    if not isinstance(projects, dict):
        return
    auto = {
        key.removeprefix("auto_").replace("create", "enabled"): projects.pop(key)
        for key in [k for k in projects if k.startswith("auto_")]
    }
    if auto:
        data["auto_projects"] = auto


def _prepare(data: dict[str, Any], label: str) -> None:
    _load_rules_file(data)
    _auto_projects(data)
    data["config_file"] = None if label == "environment" else label
    sources = data.get("sources")
    data["source_names"] = sorted(sources) if isinstance(sources, dict) else []
    data["ssh_host_names"] = _ssh_host_names(data)
    endpoints = data.get("endpoints")
    data["endpoint_names"] = sorted(endpoints) if isinstance(endpoints, dict) else []
    channels = data.get("notifications")
    data["notification_names"] = sorted(channels) if isinstance(channels, dict) else []


def _ssh_host_names(data: dict[str, Any]) -> list[str]:
    executor = data.get("executor")
    ssh = executor.get("ssh") if isinstance(executor, dict) else None
    hosts = ssh.get("hosts") if isinstance(ssh, dict) else None
    return sorted(hosts) if isinstance(hosts, dict) else []


def known_source(name: str, configured: list[str]) -> bool:
    """Whether a rule's exact ``source`` can ever match: a configured source, the
    image-push URL, or a partner (by its ``ptn_…`` id, which the file does not list)."""
    return name in configured or name == IMAGE_PUSH_SOURCE or name.startswith(PARTNER_SOURCE_PREFIX)


def check(config: RouterConfig) -> None:
    """What the types cannot say: names used once, sources that exist."""
    problem = projects_.check(config.projects)
    if problem is not None:
        raise ConfigError(problem)
    names = [r.name for r in config.rules]
    for name in {n for n in names if names.count(n) > 1}:
        raise ConfigError(f"rules: the rule name {name!r} is used more than once")
    for i, rule in enumerate(config.rules):
        for source in [rule.source] if isinstance(rule.source, str) else rule.source:
            if "*" not in source and not known_source(source, config.source_names):
                raise ConfigError(f"rules[{i}].source: no source named {source!r} is configured")
        for k, part in enumerate(rule.events):
            for source in [part.source] if isinstance(part.source, str) else part.source:
                if "*" not in source and not known_source(source, config.source_names):
                    raise ConfigError(
                        f"rules[{i}].events[{k}].source: no source named {source!r} is configured"
                    )
        compile_rule(rule, f"rules[{i}]")
        for j, action in enumerate(rule.actions):
            if isinstance(action, WebhookAction):
                problem = _webhook_problem(action, config.endpoint_names)
                if problem is not None:
                    raise ConfigError(f"rules[{i}].actions[{j}] (rule {rule.name!r}): {problem}")
            if isinstance(action, NotifyAction) and action.channel not in config.notification_names:
                raise ConfigError(
                    f"rules[{i}].actions[{j}] (rule {rule.name!r}): channel: no notification"
                    f" channel named {action.channel!r} is configured in [notifications]"
                )
            if isinstance(action, DockerAction):
                problem = _docker_problem(action)
                if problem is not None:
                    raise ConfigError(f"rules[{i}].actions[{j}] (rule {rule.name!r}): {problem}")
        for k, action in enumerate(rule.actions):
            if isinstance(action, ShellAction | SshAction | DockerAction | ComposeAction):
                job_backoff(action, f"rules[{i}].actions[{k}] (rule {rule.name!r})")
            if isinstance(action, SshAction):
                problem = _ssh_problem(action, config.ssh_host_names)
                if problem is not None:
                    raise ConfigError(f"rules[{i}].actions[{k}] (rule {rule.name!r}): {problem}")


def job_backoff(
    action: ShellAction | SshAction | DockerAction | ComposeAction, at: str
) -> tuple[float, float] | None:
    """A job action's backoff (base, max) in seconds; ConfigError naming ``at``."""
    if action.backoff is None:
        return None
    base = seconds(action.backoff.base, f"{at}: backoff.base")
    most = seconds(action.backoff.max, f"{at}: backoff.max")
    if most < base:
        raise ConfigError(f"{at}: backoff.max ({most:g} s) is less than backoff.base ({base:g} s)")
    return base, most


def _docker_problem(action: DockerAction) -> str | None:
    """What a docker action lacks for its operation."""
    op = action.operation
    if op in ("recreate", "restart", "stop") and not action.container:
        return f"operation {op!r} needs container (the name of the container)"
    if op in ("pull", "recreate", "run") and not action.image:
        return f"operation {op!r} needs image"
    if action.health is not None:
        h = action.health
        if (h.http is None) == (h.tcp is None):
            return "health: takes exactly one of http and tcp"
        if h.http is not None and not h.http.startswith(("http://", "https://")):
            return f"health.http: {h.http!r} is not an http(s) URL"
    return None


def _webhook_problem(action: WebhookAction, endpoint_names: list[str]) -> str | None:
    given = [k for k in ("url", "endpoint", "endpoints") if getattr(action, k) is not None]
    if len(given) != 1:
        return (
            'a webhook action takes exactly one of url and endpoint (or endpoints = "subscribed")'
        )
    if action.endpoints is not None and (action.headers or action.method != "POST"):
        return 'endpoints = "subscribed" sends a POST as each endpoint says: no method or headers'

    if action.endpoint is not None and action.endpoint not in endpoint_names:
        return f"endpoint: no endpoint named {action.endpoint!r} is configured"
    return None


_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


def _ssh_problem(action: SshAction, host_names: list[str]) -> str | None:
    if action.host not in host_names:
        return f"host: no ssh host named {action.host!r} is configured in [executor.ssh.hosts]"
    bad = sorted(k for k in action.env if not _ENV_NAME.match(k))
    if bad:
        return f"env: names a shell cannot export: {bad}"
    return None


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> RouterConfig:
    env = os.environ if env is None else env
    config = core.load(RouterConfig, path, env, prepare=_prepare)
    try:
        check(config)
    except ConfigError as exc:
        label = str(path) if path is not None else str(core.default_config_path(env) or "")
        raise ConfigError(f"{label}: {exc}" if label else str(exc)) from None
    return config
