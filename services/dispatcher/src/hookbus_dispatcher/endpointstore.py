"""Endpoints managed at run time: their changes as events (``endpoint.created`` …), their
read model (``endpoints``), their signing secrets (``endpoint_secrets``, never in the
log), and the dispatcher's view of them at send time (:class:`Store`).

The CLI writes through this module; the dispatcher reads through :class:`Store`. A
rotation keeps the secrets before it signing (each request carries one signature per
live secret) until their ``valid_until``, as a config endpoint's list of secrets does.
"""

from __future__ import annotations

import base64
import fnmatch
import re
import secrets as random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final

import asyncpg
import httpx
import msgspec

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.errors import ConflictError, HookbusError, InvalidError, NotFoundError
from hookbus_common.eventlog import Pending

from .config import Endpoint, Secret

SOURCE: Final = "/hookbus/endpoints"
NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TENANT: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_GLOBS: Final = 50
DEFAULT_ROTATION_WINDOW: Final = 86400.0
"""Seconds the secrets before a rotation keep signing (24 h, as Svix does)."""


class EndpointError(HookbusError):
    """An endpoint command cannot be done as asked; the message says why."""


class EndpointNotFound(EndpointError, NotFoundError):
    code = "not_found"


class EndpointConflict(EndpointError, ConflictError):
    code = "conflict"


class BadEndpoint(EndpointError, InvalidError):
    code = "invalid"


class RuntimeEndpoint(msgspec.Struct, kw_only=True):
    """A run-time endpoint as its read model row holds it (never its secrets)."""

    name: str
    endpoint_id: str
    tenant: str
    url: str
    description: str = ""
    events: list[str] = msgspec.field(default_factory=lambda: ["*"])
    paused: bool = False
    created_by: str | None = None
    created_at: datetime
    updated_at: datetime


def new_secret() -> str:
    """A Standard Webhooks secret: ``whsec_`` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(random.token_bytes(24)).decode()


# ------------------------------------------------------------------- validation


def check_name(name: str) -> str:
    if not NAME.match(name):
        raise BadEndpoint(f"name {name!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return name


def check_tenant(tenant: str) -> str:
    if not TENANT.match(tenant):
        raise BadEndpoint(f"tenant {tenant!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return tenant


def check_url(url: str) -> str:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL:
        parsed = None
    if parsed is None or parsed.scheme not in ("http", "https") or not parsed.host:
        raise BadEndpoint(f"url {url!r}: must be an absolute http:// or https:// URL")
    if parsed.userinfo:
        # Credentials in the URL would sit in the log's readable fields.
        raise BadEndpoint("url: must not hold a user name or password")
    return url


def check_events(globs: Sequence[str]) -> list[str]:
    out = [g.strip() for g in globs if g.strip()]
    if not out:
        raise BadEndpoint("events: give at least one event type or glob (* for all)")
    if len(out) > MAX_GLOBS:
        raise BadEndpoint(f"events: at most {MAX_GLOBS} globs")
    for g in out:
        if len(g) > 128 or any(c.isspace() for c in g):
            raise BadEndpoint(f"events: {g!r} is not an event type glob")
    return out


def takes(globs: Sequence[str], event_type: str) -> bool:
    """Whether an endpoint subscribed to ``globs`` takes events of ``event_type``."""
    return any(fnmatch.fnmatchcase(event_type, g) for g in globs)


# ---------------------------------------------------------------------- reading

_COLUMNS = (
    "endpoint AS name, endpoint_id, tenant, url, description, events, paused, created_by,"
    " created_at, updated_at"
)


def _row(row: asyncpg.Record) -> RuntimeEndpoint:
    return msgspec.convert(dict(row), RuntimeEndpoint)


async def get(conn: asyncpg.Connection | asyncpg.Pool, name: str) -> RuntimeEndpoint | None:
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM endpoints WHERE endpoint = $1", name)
    return None if row is None else _row(row)


async def list_all(
    conn: asyncpg.Connection | asyncpg.Pool, tenant: str | None = None
) -> list[RuntimeEndpoint]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM endpoints WHERE $1::text IS NULL OR tenant = $1 ORDER BY endpoint",
        tenant,
    )
    return [_row(r) for r in rows]


async def live_secrets(
    conn: asyncpg.Connection | asyncpg.Pool, endpoint_id: str, now: datetime
) -> list[str]:
    """The secrets that sign requests to the endpoint now, newest first."""
    rows = await conn.fetch(
        "SELECT secret FROM endpoint_secrets WHERE endpoint_id = $1"
        " AND (valid_until IS NULL OR valid_until > $2) ORDER BY created_at DESC, secret_id",
        endpoint_id,
        now,
    )
    return [str(r["secret"]) for r in rows]


async def clashes(conn: asyncpg.Connection | asyncpg.Pool, configured: Sequence[str]) -> list[str]:
    """Names both in the config file and among the run-time endpoints."""
    rows = await conn.fetch(
        "SELECT endpoint FROM endpoints WHERE endpoint = ANY($1::text[]) ORDER BY endpoint",
        list(configured),
    )
    return [str(r["endpoint"]) for r in rows]


# ---------------------------------------------------------------------- writing


async def _record(conn: asyncpg.Connection, prefix: str, data: ev.EndpointChanged) -> None:
    """Append one endpoint event and project it; the caller holds the transaction."""
    event = ev.make_event(data, source=SOURCE, subject=data.endpoint, tenant=data.tenant)
    inserted, _ = await eventlog.insert(conn, prefix, [Pending(event)])
    await readmodels.project(conn, inserted)


async def _existing(conn: asyncpg.Connection, name: str) -> RuntimeEndpoint:
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM endpoints WHERE endpoint = $1 FOR UPDATE", name
    )
    if row is None:
        raise EndpointNotFound(f"no run-time endpoint named {name!r}")
    return _row(row)


async def _store_secret(
    conn: asyncpg.Connection, endpoint_id: str, secret: str, now: datetime
) -> str:
    secret_id = ev.new_id("sec")
    await conn.execute(
        "INSERT INTO endpoint_secrets (secret_id, endpoint_id, secret, created_at)"
        " VALUES ($1, $2, $3, $4)",
        secret_id,
        endpoint_id,
        secret,
        now,
    )
    return secret_id


async def add(
    conn: asyncpg.Connection,
    prefix: str,
    *,
    name: str,
    url: str,
    tenant: str = "default",
    events: Sequence[str] = ("*",),
    description: str = "",
    by: str | None = None,
    configured: Sequence[str] = (),
) -> tuple[RuntimeEndpoint, str]:
    """Add an endpoint; returns it and its signing secret (shown once)."""
    check_name(name)
    check_tenant(tenant)
    check_url(url)
    globs = check_events(events)
    if name in configured:
        raise EndpointConflict(
            f"an endpoint named {name!r} is in the config file ([endpoints.{name}]);"
            " choose another name"
        )
    secret = new_secret()
    endpoint_id = ev.new_id("ep")
    now = datetime.now(UTC)
    async with conn.transaction():
        if await conn.fetchval("SELECT 1 FROM endpoints WHERE endpoint = $1", name):
            raise EndpointConflict(f"an endpoint named {name!r} exists")
        secret_id = await _store_secret(conn, endpoint_id, secret, now)
        await _record(
            conn,
            prefix,
            ev.EndpointCreated(
                endpoint=name, endpoint_id=endpoint_id, tenant=tenant, by=by, url=url,
                description=description, events=globs, secret_id=secret_id,
            ),
        )  # fmt: skip
        return await _existing(conn, name), secret


async def update(
    conn: asyncpg.Connection,
    prefix: str,
    name: str,
    *,
    url: str | None = None,
    events: Sequence[str] | None = None,
    description: str | None = None,
    by: str | None = None,
) -> RuntimeEndpoint:
    async with conn.transaction():
        cur = await _existing(conn, name)
        new_url = cur.url if url is None else check_url(url)
        globs = cur.events if events is None else check_events(events)
        text = cur.description if description is None else description
        await _record(
            conn,
            prefix,
            ev.EndpointUpdated(
                endpoint=name, endpoint_id=cur.endpoint_id, tenant=cur.tenant, by=by,
                url=new_url, description=text, events=globs,
            ),
        )  # fmt: skip
        return await _existing(conn, name)


async def rotate(
    conn: asyncpg.Connection,
    prefix: str,
    name: str,
    *,
    window: float = DEFAULT_ROTATION_WINDOW,
    by: str | None = None,
) -> tuple[RuntimeEndpoint, str, datetime]:
    """Give the endpoint a new secret; the live ones keep signing for ``window`` seconds
    more (0: they stop now). Returns the endpoint, the new secret (shown once) and when
    the old ones stop."""
    if window < 0:
        raise BadEndpoint("the rotation window cannot be negative")
    now = datetime.now(UTC)
    until = now + timedelta(seconds=window)
    async with conn.transaction():
        cur = await _existing(conn, name)
        await conn.execute(
            "UPDATE endpoint_secrets SET valid_until = $2 WHERE endpoint_id = $1"
            " AND (valid_until IS NULL OR valid_until > $2)",
            cur.endpoint_id,
            until,
        )
        secret = new_secret()
        secret_id = await _store_secret(conn, cur.endpoint_id, secret, now)
        await _record(
            conn,
            prefix,
            ev.EndpointSecretRotated(
                endpoint=name, endpoint_id=cur.endpoint_id, tenant=cur.tenant, by=by,
                secret_id=secret_id, previous_valid_until=until,
            ),
        )  # fmt: skip
        return await _existing(conn, name), secret, until


async def set_paused(
    conn: asyncpg.Connection,
    prefix: str,
    name: str,
    paused: bool,
    *,
    reason: str = "",
    by: str | None = None,
) -> tuple[RuntimeEndpoint, int]:
    """Pause or resume; returns the endpoint and, on resume, how many waiting deliveries
    were made due at once (the dispatcher's scheduler publishes them on its next look)."""
    async with conn.transaction():
        cur = await _existing(conn, name)
        if cur.paused == paused:
            raise EndpointConflict(
                f"endpoint {name!r} is {'paused' if paused else 'not paused'} already"
            )
        data: ev.EndpointChanged
        if paused:
            data = ev.EndpointPaused(
                endpoint=name, endpoint_id=cur.endpoint_id, tenant=cur.tenant, by=by,
                reason=reason,
            )  # fmt: skip
        else:
            data = ev.EndpointResumed(
                endpoint=name, endpoint_id=cur.endpoint_id, tenant=cur.tenant, by=by
            )
        await _record(conn, prefix, data)
        released = 0
        if not paused:
            status = await conn.execute(
                "UPDATE delivery_schedule s SET due_at = least(s.due_at, now())"
                " FROM events e WHERE e.id = s.request_id AND e.data->>'endpoint' = $1",
                name,
            )
            released = int(status.split()[-1])
        return await _existing(conn, name), released


async def delete(
    conn: asyncpg.Connection, prefix: str, name: str, *, by: str | None = None
) -> RuntimeEndpoint:
    async with conn.transaction():
        cur = await _existing(conn, name)
        await _record(
            conn,
            prefix,
            ev.EndpointDeleted(
                endpoint=name, endpoint_id=cur.endpoint_id, tenant=cur.tenant, by=by
            ),
        )
        await conn.execute("DELETE FROM endpoint_secrets WHERE endpoint_id = $1", cur.endpoint_id)
        return cur


# ------------------------------------------------------------- at send time


class Resolved(msgspec.Struct, frozen=True, kw_only=True):
    """A run-time endpoint as the dispatcher sends to it: an :class:`Endpoint` with its
    live secrets, and whether it is paused."""

    endpoint: Endpoint
    paused: bool = False


class Store:
    """The dispatcher's view of the run-time endpoints, each kept ``ttl`` seconds.

    A cache with a short time to live rather than LISTEN/NOTIFY: nothing to re-subscribe
    after Postgres comes back, and every replica converges within ``ttl`` whatever it
    missed. What a stale entry can do is bounded: a rotated secret's predecessor keeps
    signing for the rotation window (far longer than ``ttl``); a pause seen late sends at
    most ``ttl`` seconds more; a paused entry is read again before a delivery is held, so
    a resume is never missed."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.clock = clock
        self.now = now
        self._cache: dict[str, tuple[float, Resolved | None]] = {}

    async def get(self, name: str, *, fresh: bool = False) -> Resolved | None:
        """The endpoint named ``name``, or ``None`` when there is no such run-time endpoint."""
        hit = self._cache.get(name)
        if hit is not None and not fresh and self.clock() - hit[0] < self.ttl:
            return hit[1]
        found = await self._load(name)
        self._cache[name] = (self.clock(), found)
        return found

    async def _load(self, name: str) -> Resolved | None:
        async with self.pool.acquire() as conn:
            row = await get(conn, name)
            if row is None:
                return None
            texts = await live_secrets(conn, row.endpoint_id, self.now())
        return resolved(row, texts)


def resolved(row: RuntimeEndpoint, secrets: Sequence[str]) -> Resolved:
    ep = Endpoint(
        url=row.url,
        description=row.description,
        tenant=row.tenant,
        events=list(row.events) or ["*"],
        secrets=[Secret(value=s) for s in secrets],
    )
    return Resolved(endpoint=ep, paused=row.paused)


async def subscribed(
    conn: asyncpg.Connection | asyncpg.Pool,
    configured: Mapping[str, Endpoint],
    tenant: str,
    event_type: str,
) -> list[str]:
    """The endpoints (configured and run-time) of ``tenant`` that take ``event_type`` and
    are not disabled, by name, sorted. Paused ones are included: their deliveries wait."""
    names = {
        n for n, ep in configured.items() if ep.tenant == tenant and takes(ep.events, event_type)
    }
    for row in await list_all(conn, tenant):
        if row.name not in configured and takes(row.events, event_type):
            names.add(row.name)
    if not names:
        return []
    disabled = await conn.fetch(
        "SELECT endpoint FROM endpoint_state WHERE disabled AND endpoint = ANY($1::text[])",
        sorted(names),
    )
    return sorted(names - {str(r["endpoint"]) for r in disabled})
