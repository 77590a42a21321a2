"""The dispatcher's config: the shared core, its ``[dispatcher]`` section, the
``[endpoints.*]`` it delivers to and the ``[notifications.*]`` it notifies, with their
secrets (only the dispatcher reads them; the router knows both by name only)."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from hookbus_common import events as ev
from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import (
    STRUCT,
    HeaderName,
    NonNegativeFloat,
    Port,
    PositiveFloat,
    PositiveInt,
    Secret,
)

from . import httpclient, templates
from .limits import Rate, TenantLimits, parse_rate
from .schedule import DEFAULT_SCHEDULE
from .signing import Scheme, Signer
from .ssrf import Network
from .verify import decode_secret

# Seconds to wait after attempt 1, 2, …; its length + 1 is how many attempts there are.
RetrySchedule = Annotated[list[NonNegativeFloat], msgspec.Meta(max_length=100)]
EndpointName = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]+$")]


class Endpoint(msgspec.Struct, **STRUCT):
    """A destination rules deliver to by name: where, for whom, which events, how signed."""

    url: str
    description: str = ""
    tenant: str = "default"
    # Globs of the event types it takes (`push`, `pull_request*`); others are not sent.
    events: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["*"]
    )
    # Several at once while rotating: each signs every request.
    secrets: list[Secret] = []
    signing: Scheme = "standard"
    # The plain scheme's header names (defaults x-webhook-signature, x-webhook-timestamp).
    signature_header: HeaderName | None = None
    timestamp_header: HeaderName | None = None
    headers: dict[HeaderName, str] = {}
    timeout: PositiveFloat = 15.0
    # Let this endpoint reach private, loopback and other special-purpose addresses
    # (never cloud metadata services: list those in dispatcher.allow_networks).
    allow_private: bool = False
    # Its own waits between attempts (seconds), instead of dispatcher.retry_schedule;
    # it then gets len(retry_schedule) + 1 attempts.
    retry_schedule: RetrySchedule | None = None
    # Limits across every dispatcher replica: requests per second ("50/s", "300/min")
    # with `burst` on top, and requests in flight at once. Over a limit, a delivery waits.
    rate: str | None = None
    burst: PositiveInt | None = None
    max_in_flight: PositiveInt | None = None

    def limit(self) -> Rate | None:
        return Rate.of(self.rate, self.burst)

    def problems(self) -> Iterator[tuple[str, str]]:
        yield from _rate_problems(self.rate, self.burst)
        if not _sendable(self.url):
            yield "url", "must be an absolute http:// or https:// URL"
        if self.signing != "plain":
            for key in ("signature_header", "timestamp_header"):
                if getattr(self, key) is not None:
                    yield key, 'applies to signing = "plain" only'
        elif self.signature_header is not None and (
            self.signature_header.lower() == (self.timestamp_header or "").lower()
        ):
            yield "timestamp_header", "must differ from signature_header"

    def signer(self) -> Signer | None:
        """How requests to this endpoint are signed; ``None`` when it has no secret."""
        if not self.secrets:
            return None
        texts = [s.value or "" for s in self.secrets]
        if self.signing == "plain":
            return Signer(
                scheme="plain",
                keys=tuple(t.encode() for t in texts),
                signature_header=(self.signature_header or "x-webhook-signature").lower(),
                timestamp_header=(self.timestamp_header or "x-webhook-timestamp").lower(),
            )
        return Signer(keys=tuple(decode_secret(t) for t in texts))


def _rate_problems(rate: str | None, burst: int | None) -> Iterator[tuple[str, str]]:
    if rate is not None:
        try:
            parse_rate(rate)
        except ValueError as exc:
            yield "rate", str(exc)
    elif burst is not None:
        yield "burst", "applies only with a rate"


NotificationType = Literal["slack", "discord", "email", "json"]

DEFAULT_TEMPLATE: Final = (
    "{{ source }} {{ event_type }}"
    "{% if repository is defined %} {{ repository }}{% endif %}"
    "{% if branch is defined %}@{{ branch }}{% elif tag is defined %}@{{ tag }}{% endif %}"
    " (rule {{ rule }})"
)
DEFAULT_SUBJECT: Final = "[hookbus] {{ source }} {{ event_type }} (rule {{ rule }})"


class Smtp(msgspec.Struct, **STRUCT):
    """Where an email notification is sent from: an SMTP server and how to talk to it."""

    host: str
    # Unset: 587 with STARTTLS, 465 with implicit TLS, 25 without TLS.
    port: Port | None = None
    tls: Literal["starttls", "implicit", "none"] = "starttls"
    username: str | None = None
    password: Secret | None = None
    # A CA bundle (PEM) to trust for this server instead of the system's.
    ca_file: str | None = None

    def port_or_default(self) -> int:
        return self.port or {"starttls": 587, "implicit": 465, "none": 25}[self.tls]


class Notification(msgspec.Struct, **STRUCT):
    """A channel rules notify by name (``{ kind = "notify", channel = "…" }``): a Slack or
    Discord incoming webhook, an email, or a JSON POST, its message rendered from the
    event by ``template``. Webhook URLs are secrets: by env/file like endpoint secrets."""

    type: NotificationType
    url: Secret | None = None
    template: str = DEFAULT_TEMPLATE
    description: str = ""
    tenant: str = "default"
    # email
    smtp: Smtp | None = None
    sender: str | None = msgspec.field(default=None, name="from")
    to: list[str] = []
    subject: str = DEFAULT_SUBJECT
    # json
    headers: dict[HeaderName, str] = {}
    timeout: PositiveFloat = 15.0
    allow_private: bool = False
    retry_schedule: RetrySchedule | None = None

    def problems(self) -> Iterator[tuple[str, str]]:
        if self.type == "email":
            if self.smtp is None:
                yield "smtp", 'type = "email" needs smtp = { host = … }'
            if not self.sender:
                yield "from", 'type = "email" needs from (the sender address)'
            if not self.to:
                yield "to", 'type = "email" needs to (a list of addresses)'
            if self.url is not None:
                yield "url", 'does not apply to type = "email" (give smtp instead)'
        else:
            if self.url is None:
                yield "url", f'type = "{self.type}" needs url (by env or file: it is a secret)'
            for key in ("smtp", "sender", "to"):
                if getattr(self, key):
                    yield ("from" if key == "sender" else key), 'applies to type = "email" only'
        if self.headers and self.type != "json":
            yield "headers", 'applies to type = "json" only'
        for key in ("template", "subject"):
            problem = templates.check(getattr(self, key))
            if problem is not None:
                yield key, problem


def endpoint_id(name: str) -> str:
    """An endpoint's stable id (``ep_…``), derived from its name."""
    return ev.derived_id("endpoint", name, prefix="ep")


class DispatcherSettings(msgspec.Struct, **STRUCT):
    health_port: Port = 9103
    max_in_flight: PositiveInt = 64
    ack_wait_seconds: PositiveFloat = 30.0
    # Attempts at one delivery; unset: one more than retry_schedule has waits.
    max_attempts: PositiveInt | None = None
    # Seconds to wait after attempt 1, 2, … (the last repeats), each spread by ±10%.
    retry_schedule: RetrySchedule = msgspec.field(default_factory=lambda: list(DEFAULT_SCHEDULE))
    timeout_seconds: PositiveFloat = 10.0
    # How long a dispatcher keeps what it read of a run-time endpoint (`hookbus endpoints
    # add`) before reading it again (0: read it for every delivery).
    endpoint_cache_seconds: NonNegativeFloat = 5.0
    # CIDRs deliveries may reach even though they are private, loopback, … (`url` actions
    # and every endpoint alike).
    allow_networks: list[str] = []
    # An endpoint whose every attempt failed for this many seconds is disabled (0: never).
    disable_after: NonNegativeFloat = 86400.0
    # Deliveries read ahead of the sending slots and served fairly by tenant and
    # destination (fairness.py); at most this many per process.
    read_ahead: PositiveInt = 10_000
    # Deliveries to one destination (endpoint, channel, URL host) in flight at once in
    # this process, unless its endpoint says max_in_flight (unset: an eighth of
    # max_in_flight, at least 1), so a slow one cannot take every slot.
    destination_max_in_flight: PositiveInt | None = None
    # Per tenant: its weight in the fair share, a rate limit, its overflow policy.
    tenants: dict[str, TenantLimits] = {}

    def attempts(self) -> int:
        """Attempts at one delivery (``url`` actions, endpoints without their own schedule)."""
        return self.max_attempts or len(self.retry_schedule) + 1

    def destination_cap(self) -> int:
        return self.destination_max_in_flight or max(1, self.max_in_flight // 8)

    def networks(self) -> tuple[Network, ...]:
        return tuple(ipaddress.ip_network(n.strip(), strict=False) for n in self.allow_networks)


class DispatcherConfig(core.Settings, **STRUCT):
    dispatcher: DispatcherSettings = DispatcherSettings()
    endpoints: dict[EndpointName, Endpoint] = {}
    notifications: dict[EndpointName, Notification] = {}


# ----------------------------------------------------------------------- loading


def _resolve_secret(secret: Secret, where: str, base: Path, env: Mapping[str, str]) -> Secret:
    # A variable's value is trimmed here (a URL or a key pasted with its newline), as a
    # file's always is.
    return core.resolve_secret(secret, where, base, env, trim_env=True)


def resolve_endpoint(name: str, ep: Endpoint, base: Path, env: Mapping[str, str]) -> Endpoint:
    """``ep`` checked, with every secret read from its variable, file or value."""
    where = f"endpoints.{name}"
    for key, message in ep.problems():
        raise ConfigError(f"{where}.{key}: {message}")
    secrets = [
        _resolve_secret(s, f"{where}.secrets[{i}]", base, env) for i, s in enumerate(ep.secrets)
    ]
    if ep.signing == "standard":
        for i, secret in enumerate(secrets):
            try:
                decode_secret(secret.value or "")
            except ValueError:
                # Never echo the secret itself.
                raise ConfigError(
                    f"{where}.secrets[{i}]: not a Standard Webhooks secret (whsec_ + base64)"
                ) from None
    return msgspec.structs.replace(ep, secrets=secrets)


def _sendable(url: str) -> bool:
    """Whether ``url`` is one a request can be sent to (checked as sending checks it)."""
    try:
        httpclient.address(url)
    except ValueError:
        return False
    return True


def resolve_notification(
    name: str, n: Notification, base: Path, env: Mapping[str, str]
) -> Notification:
    """``n`` checked, with its URL and SMTP password read from their variable or file."""
    where = f"notifications.{name}"
    for key, message in n.problems():
        raise ConfigError(f"{where}.{key}: {message}")
    url = n.url
    if url is not None:
        url = _resolve_secret(url, f"{where}.url", base, env)
        if not _sendable(url.value or ""):
            # Never echo the URL: it is the secret.
            raise ConfigError(f"{where}.url: must be an absolute http:// or https:// URL")
    smtp = n.smtp
    if smtp is not None and smtp.password is not None:
        password = _resolve_secret(smtp.password, f"{where}.smtp.password", base, env)
        smtp = msgspec.structs.replace(smtp, password=password)
    if smtp is not None and smtp.ca_file is not None:
        ca = Path(smtp.ca_file).expanduser()
        smtp = msgspec.structs.replace(smtp, ca_file=str(ca if ca.is_absolute() else base / ca))
    return msgspec.structs.replace(n, url=url, smtp=smtp)


def _check_each_endpoint(data: dict[str, Any], label: str) -> None:
    # msgspec writes a dict key as `[...]`; check each endpoint alone so the error names it.
    for section, cls in (("endpoints", Endpoint), ("notifications", Notification)):
        tables = data.get(section)
        if isinstance(tables, dict):
            for name, table in tables.items():
                core.convert(table, cls, label, f"{section}.{name}")


def load_unresolved(
    path: str | Path | None = None, env: Mapping[str, str] | None = None
) -> DispatcherConfig:
    """The config with no secret read: for tools that need names and URLs only."""
    env = os.environ if env is None else env
    return core.load(DispatcherConfig, path, env, prepare=_check_each_endpoint)


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> DispatcherConfig:
    """The dispatcher's config from the file and environment, endpoints' secrets read."""
    env = os.environ if env is None else env
    config = core.load(DispatcherConfig, path, env, prepare=_check_each_endpoint)
    for i, net in enumerate(config.dispatcher.allow_networks):
        try:
            ipaddress.ip_network(net.strip(), strict=False)
        except ValueError:
            raise ConfigError(
                f"dispatcher.allow_networks[{i}]: {net!r} is not a network (CIDR, like 10.0.0.0/8)"
            ) from None
    for name, tenant in config.dispatcher.tenants.items():
        for key, message in _rate_problems(tenant.rate, tenant.burst):
            raise ConfigError(f"dispatcher.tenants.{name}.{key}: {message}")
    base = Path(config.base_dir)
    endpoints = {
        name: resolve_endpoint(name, ep, base, env) for name, ep in config.endpoints.items()
    }
    notifications = {
        name: resolve_notification(name, n, base, env) for name, n in config.notifications.items()
    }
    return msgspec.structs.replace(config, endpoints=endpoints, notifications=notifications)
