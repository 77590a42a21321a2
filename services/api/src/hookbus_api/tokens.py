"""Operator API tokens: made and revoked as events, shown once, kept only as a SHA-256.

A token is ``hbk_`` and 32 random bytes (URL-safe base64). Its scope is one of ``read``
(see everything), ``operate`` (also start replays and send messages) and ``admin`` (also
list tokens); each includes the ones before it. ``send`` is apart, for applications: it
sends messages (``POST /api/v1/messages``) and sees nothing. Creating and revoking are ``io.hookbus.apitoken.*`` events
naming the token's id and who did it; the hash lives only in ``api_tokens``.

A ``send`` token can be bound to tenants: it then sends messages for those tenants only.
Unbound, it sends for every tenant. Only ``send`` tokens are bound: the other scopes read
the whole installation (webhooks, jobs and the like belong to no tenant), so a tenant
there would promise an isolation the reads cannot keep.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Final, Literal, TypeAlias

import asyncpg
import msgspec

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.errors import ConflictError, HookbusError, InvalidError, NotFoundError
from hookbus_common.eventlog import Pending

Scope: TypeAlias = Literal["read", "operate", "admin", "send"]
SCOPES: Final[tuple[Scope, ...]] = ("read", "operate", "admin", "send")
# Each includes the ones before it; `send` is in none of them but operate and admin.
_RANKED: Final[tuple[Scope, ...]] = ("read", "operate", "admin")
EVENT_SOURCE: Final = "/hookbus/api/tokens"
TOKEN_PREFIX: Final = "hbk_"  # noqa: S105 (a prefix, not a secret)
_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TENANT = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
MAX_TENANTS: Final = 100


class TokenError(HookbusError):
    """A token command cannot be done as asked; the message says why."""


class TokenNotFound(TokenError, NotFoundError):
    code = "not_found"


class NameTaken(TokenError, ConflictError):
    code = "conflict"


class BadToken(TokenError, InvalidError):
    code = "invalid"


def allows(have: str, need: Scope) -> bool:
    """Whether a token of scope ``have`` may do what needs ``need``."""
    if need == "send":
        return have in ("send", "operate", "admin")
    return have in _RANKED and _RANKED.index(have) >= _RANKED.index(need)


class ApiToken(msgspec.Struct, frozen=True, kw_only=True):
    """A token as listed: never the token, never its hash."""

    token_id: str
    name: str
    scope: Scope
    # The tenants a send token may send for; empty: every tenant.
    tenants: list[str] = []
    created_by: str | None = None
    created_at: datetime
    revoked_at: datetime | None = None
    last_used_at: datetime | None = None

    def may_send_for(self, tenant: str) -> bool:
        """Whether this token may send a message for ``tenant``."""
        return not self.tenants or tenant in self.tenants


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    # Any string a client sends hashes (surrogatepass): a lookup never fails early on format,
    # so a malformed token and an unknown one take the same path.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


_COLUMNS = "token_id, name, scope, tenants, created_by, created_at, revoked_at, last_used_at"


def _token(row: asyncpg.Record) -> ApiToken:
    return msgspec.convert(dict(row), ApiToken)


async def _append(conn: asyncpg.Connection, prefix: str, data: ev.ApiTokenEvent) -> None:
    """Append one token event (its outbox row gets it onto the bus through the relay every
    service runs); the caller holds the transaction."""
    event = ev.make_event(data, source=EVENT_SOURCE, subject=data.token_id)
    await eventlog.insert(conn, prefix, [Pending(event)])


def check_tenants(scope: str, tenants: Sequence[str]) -> list[str]:
    """``tenants`` checked for a token of ``scope``, without repeats, in the order given."""
    out = list(dict.fromkeys(tenants))
    if out and scope != "send":
        raise BadToken(
            f"tenant: only send tokens are bound to tenants (a {scope} token reads the whole"
            " installation)"
        )
    if len(out) > MAX_TENANTS:
        raise BadToken(f"tenant: at most {MAX_TENANTS} tenants")
    for t in out:
        if not _TENANT.match(t):
            raise BadToken(f"tenant {t!r}: use 1-64 letters, digits, '.', '_' or '-'")
    return out


async def create(
    conn: asyncpg.Connection,
    prefix: str,
    *,
    name: str,
    scope: str,
    by: str | None,
    tenants: Sequence[str] = (),
) -> tuple[ApiToken, str]:
    """Make a token; returns it and the token itself (shown once, then only its hash).
    ``tenants``: a send token sends for these only (none: for every tenant)."""
    if not _NAME.match(name):
        raise BadToken(f"name {name!r}: use 1-64 letters, digits, '.', '_', '@' or '-'")
    if scope not in SCOPES:
        raise BadToken(f"scope {scope!r}: one of {', '.join(SCOPES)}")
    bound = check_tenants(scope, tenants)
    token = new_token()
    token_id = ev.new_id("tok")
    async with conn.transaction():
        try:
            row = await conn.fetchrow(
                "INSERT INTO api_tokens (token_id, name, scope, token_sha256, created_by, tenants)"
                f" VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}",
                token_id, name, scope, token_hash(token), by, bound,
            )  # fmt: skip
        except asyncpg.UniqueViolationError:
            raise NameTaken(f"a token named {name!r} exists; revoke it first") from None
        await _append(
            conn,
            prefix,
            ev.ApiTokenCreated(token_id=token_id, name=name, scope=scope, by=by, tenants=bound),
        )
    return _token(row), token


async def revoke(conn: asyncpg.Connection, prefix: str, ref: str, *, by: str | None) -> ApiToken:
    """Revoke a live token by id or name; it signs no one in from now on."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "UPDATE api_tokens SET revoked_at = now()"
            " WHERE (token_id = $1 OR name = $1) AND revoked_at IS NULL"
            f" RETURNING {_COLUMNS}",
            ref,
        )
        if row is None:
            raise TokenNotFound(f"no live token {ref!r}")
        tok = _token(row)
        await _append(conn, prefix, ev.ApiTokenRevoked(token_id=tok.token_id, name=tok.name, by=by))
    return tok


async def list_tokens(conn: asyncpg.Connection, *, include_revoked: bool = False) -> list[ApiToken]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM api_tokens WHERE $1 OR revoked_at IS NULL"
        " ORDER BY created_at, token_id",
        include_revoked,
    )
    return [_token(r) for r in rows]


async def authenticate(conn: asyncpg.Connection, token: str) -> ApiToken | None:
    """The live token ``token`` is, or None (unknown, revoked or malformed: all alike).

    One read per request; ``last_used_at`` is written at most once a minute per token."""
    digest = token_hash(token)
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS}, last_used_at IS NULL OR last_used_at < now() - interval '1 minute'"
        " AS stale FROM api_tokens WHERE token_sha256 = $1 AND revoked_at IS NULL",
        digest,
    )
    if row is None:
        return None
    if row["stale"]:
        await conn.execute(
            "UPDATE api_tokens SET last_used_at = now() WHERE token_sha256 = $1", digest
        )
    fields = dict(row)
    del fields["stale"]
    return msgspec.convert(fields, ApiToken)
