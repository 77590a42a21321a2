"""The operator API's config: the shared core, its ``[api]`` section, and what it shows of
the endpoints and rules other services own (names, kinds and places; never a secret).

The API decodes no other service's section as that service does: it reads the
``[endpoints.*]`` and ``[[rules]]`` tables (and the router's ``rules_file``) leniently into
views that keep only what an operator may see, so a mistake there stops the service that
owns it, not the API.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, Port, PositiveInt

from . import redact

_VIEW: dict[str, Any] = {"frozen": True, "kw_only": True}


class ApiSettings(msgspec.Struct, **STRUCT):
    # Its own port, never the receiver's: the operator API is not for webhook senders.
    host: str = "127.0.0.1"
    port: Port = 9180
    # Events a page of a listing holds at most (a request's `limit` is capped here).
    max_page: Annotated[int, msgspec.Meta(ge=10, le=10_000)] = 1000
    # Replays the API runs at once (each started with POST /api/replays).
    max_replays: PositiveInt = 4


class EndpointView(msgspec.Struct, **_VIEW):
    """An ``[endpoints.<name>]`` as an operator sees it: no secrets, no header values."""

    name: str
    url: str
    description: str = ""
    tenant: str = "default"
    events: list[str] = []
    signing: str = "standard"
    signed: bool = False
    header_names: list[str] = []
    allow_private: bool = False


class ActionView(msgspec.Struct, **_VIEW):
    """One action of a rule: its kind and where it goes (an endpoint or host by name)."""

    kind: str
    target: str | None = None


class RuleView(msgspec.Struct, **_VIEW):
    name: str
    source: str = "*"
    event: str = "*"
    repository: str = "*"
    branch: str = "*"
    enabled: bool = True
    actions: list[ActionView] = []


class ApiConfig(core.Settings, **STRUCT):
    api: ApiSettings = ApiSettings()
    # Set by the loader from the [endpoints.*] and [[rules]] tables (see _prepare).
    endpoint_views: list[EndpointView] = []
    rule_views: list[RuleView] = []
    # Tenants with [dispatcher.tenants.<name>] overflow = "block": their max_backlog.
    backlog_bounds: dict[str, int] = {}


shown_url = redact.url


def _str(value: Any, default: str = "") -> str:
    return value if isinstance(value, str) else default


def _endpoint_view(name: str, table: Any) -> EndpointView:
    t = table if isinstance(table, dict) else {}
    headers = t.get("headers")
    events = t.get("events")
    return EndpointView(
        name=name,
        url=shown_url(_str(t.get("url"))),
        description=_str(t.get("description")),
        tenant=_str(t.get("tenant"), "default"),
        events=[e for e in events if isinstance(e, str)] if isinstance(events, list) else ["*"],
        signing=_str(t.get("signing"), "standard"),
        signed=bool(t.get("secrets")),
        header_names=sorted(headers) if isinstance(headers, dict) else [],
        allow_private=t.get("allow_private") is True,
    )


def _action_view(action: Any) -> ActionView:
    a = action if isinstance(action, dict) else {}
    kind = _str(a.get("kind"), "?")
    target: str | None = None
    if kind == "webhook":
        target = (
            f"endpoint {a['endpoint']}"
            if isinstance(a.get("endpoint"), str)
            else shown_url(_str(a.get("url")))
        )
    elif kind == "ssh":
        target = f"host {_str(a.get('host'))}"
    elif kind in ("shell", "docker", "compose"):
        command = a.get("command")
        # The program only: arguments may carry tokens.
        if isinstance(command, list) and command and isinstance(command[0], str):
            target = command[0]
    return ActionView(kind=kind, target=target)


def _rule_view(rule: Any) -> RuleView:
    r = rule if isinstance(rule, dict) else {}
    actions = r.get("actions")
    return RuleView(
        name=_str(r.get("name"), "?"),
        source=_str(r.get("source"), "*"),
        event=_str(r.get("event"), "*"),
        repository=_str(r.get("repository"), "*"),
        branch=_str(r.get("branch"), "*"),
        enabled=r.get("enabled") is not False,
        actions=[_action_view(a) for a in actions] if isinstance(actions, list) else [],
    )


def _rules_file(data: dict[str, Any]) -> list[Any]:
    """The router's separate rules file, if it names one and it can be read (else nothing:
    the router reports a bad file, the API only shows what it finds)."""
    router = data.get("router")
    name = router.get("rules_file") if isinstance(router, dict) else None
    if not isinstance(name, str):
        return []
    path = Path(name)
    if not path.is_absolute():
        path = Path(str(data.get("base_dir", "."))) / path
    try:
        rules = tomllib.loads(path.read_text()).get("rules", [])
    except (OSError, tomllib.TOMLDecodeError):
        return []
    return rules if isinstance(rules, list) else []


def _prepare(data: dict[str, Any], label: str) -> None:
    endpoints = data.get("endpoints")
    views = (
        [_endpoint_view(n, t) for n, t in sorted(endpoints.items())]
        if isinstance(endpoints, dict)
        else []
    )
    data["endpoint_views"] = msgspec.to_builtins(views)
    rules = data.get("rules")
    all_rules = [*(rules if isinstance(rules, list) else []), *_rules_file(data)]
    data["rule_views"] = msgspec.to_builtins([_rule_view(r) for r in all_rules])
    data["backlog_bounds"] = _backlog_bounds(data)


def _backlog_bounds(data: dict[str, Any]) -> dict[str, int]:
    """Read leniently (the dispatcher checks these tables): tenants whose new messages
    are refused once their backlog passes ``max_backlog``."""
    dispatcher = data.get("dispatcher")
    tenants = dispatcher.get("tenants") if isinstance(dispatcher, dict) else None
    out = {}
    for name, t in (tenants or {}).items() if isinstance(tenants, dict) else ():
        if isinstance(t, dict) and t.get("overflow") == "block":
            bound = t.get("max_backlog", 10_000)
            out[name] = bound if isinstance(bound, int) and bound > 0 else 10_000
    return out


_HOST = re.compile(r"^[A-Za-z0-9.:\[\]_-]+$")


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ApiConfig:
    """The API's config from the file and environment."""
    env = os.environ if env is None else env
    config = core.load(ApiConfig, path, env, prepare=_prepare)
    if not _HOST.match(config.api.host):
        raise ConfigError(f"api.host: {config.api.host!r} is not a host name or address")
    return config
