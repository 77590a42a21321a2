"""Endpoints managed at run time: their changes as events (``endpoint.created`` …), their
read model (``endpoints``), their signing secrets (``endpoint_secrets``, never in the
log), and the dispatcher's view of them at send time (:class:`Store`).

The CLI writes through this module; the dispatcher reads through :class:`Store`. A
rotation keeps the secrets before it signing (each request carries one signature per
live secret) until their ``valid_until``, as a config endpoint's list of secrets does.

Secrets are stored sealed (AES-256-GCM, :mod:`hookbus_common.sealing`) under the key ring
of ``HOOKBUS_SECRETS_KEY`` or ``HOOKBUS_SECRETS_KEY_FILE``: whoever writes them (the CLI)
and whoever reads them (the dispatcher) needs it, nobody else. A row written before
secrets were sealed (no ``key_id``) is read as it is, and sealed on the endpoint's next
rotation or by :func:`reseal` (``hookbus endpoints reseal``).
"""

from __future__ import annotations

import base64
import fnmatch
import logging
import re
import secrets as random
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, Literal

import asyncpg
import msgspec

from hookbus_common import eventlog, readmodels, sealing
from hookbus_common import events as ev
from hookbus_common.errors import (
    ConflictError,
    Deferred,
    HookbusError,
    InvalidError,
    NotFoundError,
)
from hookbus_common.eventlog import Pending
from hookbus_common.sealing import Keyring, Sealed, SealingError
from hookbus_common.settings import Secret

from . import httpclient
from .config import Endpoint

log = logging.getLogger(__name__)

SOURCE: Final = "/hookbus/endpoints"
NAME: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
TENANT: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_GLOBS: Final = 50
DEFAULT_ROTATION_WINDOW: Final = 86400.0
"""Seconds the secrets before a rotation keep signing (24 h, as Svix does)."""
UNSEALED_RETRY: Final = 30.0
"""Seconds before a delivery whose endpoint's secret cannot be opened is tried again."""


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
        parsed = httpclient.address(url)
    except ValueError:
        parsed = None
    if parsed is None:
        raise BadEndpoint(f"url {url!r}: must be an absolute http:// or https:// URL")
    if parsed.authorization is not None:
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


def _context(endpoint_id: str, secret_id: str) -> str:
    """What a sealed secret is bound to: its row (moved to another, it does not open)."""
    return f"endpoint_secrets/{endpoint_id}/{secret_id}"


def _opened(row: asyncpg.Record, keyring: Keyring | None) -> str:
    """A stored secret as text: opened when sealed, as it is when written before sealing."""
    if row["key_id"] is None:
        return str(row["secret"])
    if keyring is None:
        raise SealingError(
            f"{sealing.KEY_ENV} (or {sealing.KEY_FILE_ENV}) is not set: the signing secrets"
            f" of run-time endpoints are sealed under key {row['key_id']}; give that key"
        )
    sealed = Sealed(str(row["key_id"]), str(row["secret"]))
    return keyring.open(sealed, _context(str(row["endpoint_id"]), str(row["secret_id"])))


async def live_secrets(
    conn: asyncpg.Connection | asyncpg.Pool,
    endpoint_id: str,
    now: datetime,
    keyring: Keyring | None = None,
) -> list[str]:
    """The secrets that sign requests to the endpoint now, newest first, opened with
    ``keyring`` (``SealingError`` when one cannot be)."""
    rows = await conn.fetch(
        "SELECT secret_id, endpoint_id, secret, key_id FROM endpoint_secrets"
        " WHERE endpoint_id = $1 AND (valid_until IS NULL OR valid_until > $2)"
        " ORDER BY created_at DESC, secret_id",
        endpoint_id,
        now,
    )
    return [_opened(r, keyring) for r in rows]


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


def _keyring(keyring: Keyring | None) -> Keyring:
    """``keyring``, or the one the environment sets (``SealingError`` naming the setting)."""
    return keyring if keyring is not None else sealing.require()


async def _store_secret(
    conn: asyncpg.Connection, endpoint_id: str, secret: str, now: datetime, keyring: Keyring
) -> str:
    secret_id = ev.new_id("sec")
    sealed = keyring.seal(secret, _context(endpoint_id, secret_id))
    await conn.execute(
        "INSERT INTO endpoint_secrets (secret_id, endpoint_id, secret, key_id, created_at)"
        " VALUES ($1, $2, $3, $4, $5)",
        secret_id,
        endpoint_id,
        sealed.text,
        sealed.key_id,
        now,
    )
    return secret_id


async def _reseal_rows(
    conn: asyncpg.Connection, keyring: Keyring, endpoint_id: str | None
) -> tuple[int, int]:
    """Seal under the current key every secret (of ``endpoint_id``, or all) that is in
    plaintext or under an older key; returns how many of each. The caller holds the
    transaction."""
    rows = await conn.fetch(
        "SELECT secret_id, endpoint_id, secret, key_id FROM endpoint_secrets"
        " WHERE ($1::text IS NULL OR endpoint_id = $1) AND key_id IS DISTINCT FROM $2"
        " ORDER BY secret_id FOR UPDATE",
        endpoint_id,
        keyring.current,
    )
    plain = older = 0
    for r in rows:
        text = _opened(r, keyring)
        sealed = keyring.seal(text, _context(str(r["endpoint_id"]), str(r["secret_id"])))
        await conn.execute(
            "UPDATE endpoint_secrets SET secret = $2, key_id = $3 WHERE secret_id = $1",
            r["secret_id"],
            sealed.text,
            sealed.key_id,
        )
        if r["key_id"] is None:
            plain += 1
        else:
            older += 1
    return plain, older


async def reseal(conn: asyncpg.Connection, keyring: Keyring | None = None) -> tuple[int, int]:
    """Seal every stored secret under the ring's current key: those written before secrets
    were sealed, and those under an older key (after a key rotation). Returns how many of
    each; nothing is sent differently (the secrets are the same)."""
    ring = _keyring(keyring)
    async with conn.transaction():
        return await _reseal_rows(conn, ring, None)


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
    keyring: Keyring | None = None,
) -> tuple[RuntimeEndpoint, str]:
    """Add an endpoint; returns it and its signing secret (shown once, stored sealed under
    ``keyring``, by default the one the environment sets)."""
    check_name(name)
    check_tenant(tenant)
    check_url(url)
    globs = check_events(events)
    ring = _keyring(keyring)
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
        secret_id = await _store_secret(conn, endpoint_id, secret, now, ring)
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
    keyring: Keyring | None = None,
) -> tuple[RuntimeEndpoint, str, datetime]:
    """Give the endpoint a new secret; the live ones keep signing for ``window`` seconds
    more (0: they stop now). Returns the endpoint, the new secret (shown once) and when
    the old ones stop. Its secrets still in plaintext or under an older key are sealed
    under the current key too."""
    if window < 0:
        raise BadEndpoint("the rotation window cannot be negative")
    ring = _keyring(keyring)
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
        await _reseal_rows(conn, ring, cur.endpoint_id)
        secret = new_secret()
        secret_id = await _store_secret(conn, cur.endpoint_id, secret, now, ring)
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
    a resume is never missed.

    Secrets are opened with ``keyring`` (by default the one the environment sets, read
    once here: a malformed key stops the dispatcher at start). One that cannot be opened
    (no key, or not the key it was sealed under) is logged, naming the setting, and the
    delivery deferred: nothing is sent unsigned, nothing is lost, and it goes out once the
    dispatcher is given the key."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        *,
        ttl: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
        keyring: Keyring | Literal["env"] | None = "env",
    ) -> None:
        self.pool = pool
        self.ttl = ttl
        self.clock = clock
        self.now = now
        self.keyring = sealing.load() if keyring == "env" else keyring
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
            try:
                texts = await live_secrets(conn, row.endpoint_id, self.now(), self.keyring)
            except SealingError as exc:
                log.error(
                    "cannot open an endpoint's signing secret; its deliveries wait",
                    extra={"endpoint": name, "error": str(exc)},
                )
                raise Deferred(UNSEALED_RETRY, f"endpoint {name!r}: {exc}") from None
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
