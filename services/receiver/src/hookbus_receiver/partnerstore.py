"""Partners: senders with their own webhook URL (a token in the path), kept as events.

Every change is an ``io.hookbus.partner.*`` event appended to the log; the ``partners``
table is its read model, written in the same transaction. A token is shown once and only
its SHA-256 is stored, in ``partner_tokens`` — never in an event, so that table is not a
read model and ``hookbus rebuild`` keeps it.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

import asyncpg
import msgspec

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.errors import ConflictError, HookbusError, NotFoundError
from hookbus_common.eventlog import Pending
from hookbus_common.events import PartnerValidation

STATUSES: Final = ("ACTIVE", "INACTIVE", "SUSPENDED")
EVENT_SOURCE: Final = "/hookbus/partners"
WEBHOOK_PATH: Final = "/webhook/v1/"


class PartnerError(HookbusError):
    """A partner command cannot be done as asked; the message says why."""


class PartnerNotFound(PartnerError, NotFoundError):
    code = "not_found"


class NameTaken(PartnerError, ConflictError):
    code = "conflict"


class Partner(msgspec.Struct, frozen=True, kw_only=True):
    partner_id: str
    name: str
    description: str
    tenant: str
    status: str
    validation: PartnerValidation
    token_id: str
    created_at: datetime
    modified_at: datetime
    deleted_at: datetime | None = None

    @property
    def deleted(self) -> bool:
        return self.deleted_at is not None

    @property
    def source(self) -> str:
        """The name its webhooks are recorded under: subject-safe and never reused."""
        return self.partner_id


# ----------------------------------------------------------------------- tokens


def new_token() -> str:
    """32 random bytes, URL-safe: the only secret a partner holds."""
    return secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    # Any string from a URL path hashes (surrogatepass): lookups never fail early on format.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


# ------------------------------------------------------------------- validation


def parse_validation(required: Sequence[str] = (), schema: Any = None) -> PartnerValidation:
    """Check a validation config given by a person; raises PartnerError naming the problem."""
    for path in required:
        if not path or any(not part for part in path.split(".")):
            raise PartnerError(f"required field {path!r} is not a dotted path like order.id")
    if schema is not None:
        if not isinstance(schema, dict):
            raise PartnerError("the JSON Schema must be a JSON object")
        _check_schema(schema)
    return PartnerValidation(required=list(required), schema=schema)


def _check_schema(schema: dict[str, Any]) -> None:
    # The receiver's own compiler: what is refused here would be refused there.
    from .validation import InvalidConfig, compile_schema

    try:
        compile_schema(schema)
    except InvalidConfig as exc:
        raise PartnerError(str(exc)) from None


# ------------------------------------------------------------------------ store

_COLUMNS = (
    "partner_id, name, description, tenant, status, validation, token_id,"
    " created_at, modified_at, deleted_at"
)
_validation = msgspec.json.Decoder(PartnerValidation)


def _partner(row: asyncpg.Record) -> Partner:
    return Partner(
        partner_id=row["partner_id"],
        name=row["name"],
        description=row["description"],
        tenant=row["tenant"],
        status=row["status"],
        validation=_validation.decode(row["validation"]),
        token_id=row["token_id"],
        created_at=row["created_at"],
        modified_at=row["modified_at"],
        deleted_at=row["deleted_at"],
    )


async def _append(
    conn: asyncpg.Connection, prefix: str, data: ev.PartnerEvent, tenant: str
) -> None:
    """Append one partner event and project it; the caller holds the transaction.

    The outbox row written with it gets the event onto the bus: published by the relay
    every service process runs, so a CLI needs no NATS connection of its own.
    """
    event = ev.make_event(data, source=EVENT_SOURCE, subject=data.partner_id, tenant=tenant)
    inserted, _ = await eventlog.insert(conn, prefix, [Pending(event)])
    await readmodels.project(conn, inserted)


async def get(conn: asyncpg.Connection, ref: str, *, for_update: bool = False) -> Partner:
    """A partner by id (deleted ones too) or by name (live ones only)."""
    row = await conn.fetchrow(
        f"SELECT {_COLUMNS} FROM partners"
        " WHERE partner_id = $1 OR (name = $1 AND deleted_at IS NULL)"
        " ORDER BY (partner_id = $1) DESC LIMIT 1" + (" FOR UPDATE" if for_update else ""),
        ref,
    )
    if row is None:
        raise PartnerNotFound(f"no partner {ref!r}")
    return _partner(row)


async def list_partners(
    conn: asyncpg.Connection, *, include_deleted: bool = False
) -> list[Partner]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM partners WHERE $1 OR deleted_at IS NULL ORDER BY created_at",
        include_deleted,
    )
    return [_partner(r) for r in rows]


async def find_active_by_token(conn: asyncpg.Connection, token: str) -> Partner | None:
    """The live, ACTIVE partner whose current token this is; None for anything else.

    Every caller runs this same single query whatever the token looks like, so unknown,
    inactive, suspended, deleted and rotated-away tokens take the same path and time.
    """
    row = await conn.fetchrow(
        f"SELECT {', '.join('p.' + c.strip() for c in _COLUMNS.split(','))}"
        " FROM partner_tokens t"
        " JOIN partners p ON p.partner_id = t.partner_id AND p.token_id = t.token_id"
        " WHERE t.token_sha256 = $1 AND p.status = 'ACTIVE' AND p.deleted_at IS NULL",
        token_hash(token),
    )
    return _partner(row) if row is not None else None


async def _store_token(conn: asyncpg.Connection, partner_id: str) -> tuple[str, str]:
    token = new_token()
    token_id = ev.new_id("tok")
    await conn.execute(
        "INSERT INTO partner_tokens (token_id, partner_id, token_sha256) VALUES ($1, $2, $3)",
        token_id,
        partner_id,
        token_hash(token),
    )
    return token_id, token


async def create(
    conn: asyncpg.Connection,
    prefix: str,
    *,
    name: str,
    description: str = "",
    tenant: str = "default",
    validation: PartnerValidation | None = None,
    status: str = "ACTIVE",
) -> tuple[Partner, str]:
    """Create a partner; returns it and its token (the only time the token is known)."""
    name = name.strip()
    if not name:
        raise PartnerError("a partner needs a name")
    if status not in STATUSES:
        raise PartnerError(f"status must be one of {', '.join(STATUSES)}")
    partner_id = ev.new_id("ptn")
    async with conn.transaction():
        if await conn.fetchval(
            "SELECT 1 FROM partners WHERE name = $1 AND deleted_at IS NULL", name
        ):
            raise NameTaken(f"a partner named {name!r} exists")
        token_id, token = await _store_token(conn, partner_id)
        data = ev.PartnerCreated(
            partner_id=partner_id,
            name=name,
            description=description,
            tenant=tenant,
            status=status,
            validation=validation or PartnerValidation(),
            token_id=token_id,
        )
        try:
            await _append(conn, prefix, data, tenant)
        except asyncpg.UniqueViolationError:  # created at the same moment by someone else
            raise NameTaken(f"a partner named {name!r} exists") from None
        return await get(conn, partner_id), token


async def _live(conn: asyncpg.Connection, ref: str) -> Partner:
    partner = await get(conn, ref, for_update=True)
    if partner.deleted:
        raise PartnerError(f"partner {partner.partner_id} is deleted")
    return partner


async def update(
    conn: asyncpg.Connection,
    prefix: str,
    ref: str,
    *,
    name: str | None = None,
    description: str | None = None,
    tenant: str | None = None,
    validation: PartnerValidation | None = None,
) -> Partner:
    async with conn.transaction():
        p = await _live(conn, ref)
        data = ev.PartnerUpdated(
            partner_id=p.partner_id,
            name=p.name if name is None else name.strip(),
            description=p.description if description is None else description,
            tenant=p.tenant if tenant is None else tenant,
            validation=p.validation if validation is None else validation,
        )
        if not data.name:
            raise PartnerError("a partner needs a name")
        try:
            await _append(conn, prefix, data, data.tenant)
        except asyncpg.UniqueViolationError:
            raise NameTaken(f"a partner named {data.name!r} exists") from None
        return await get(conn, p.partner_id)


async def rotate(conn: asyncpg.Connection, prefix: str, ref: str) -> tuple[Partner, str]:
    """Give the partner a new token; the old one stops working when this commits."""
    async with conn.transaction():
        p = await _live(conn, ref)
        token_id, token = await _store_token(conn, p.partner_id)
        await conn.execute(
            "DELETE FROM partner_tokens WHERE partner_id = $1 AND token_id <> $2",
            p.partner_id,
            token_id,
        )
        data = ev.PartnerTokenRotated(
            partner_id=p.partner_id, token_id=token_id, previous_token_id=p.token_id
        )
        await _append(conn, prefix, data, p.tenant)
        return await get(conn, p.partner_id), token


async def set_status(conn: asyncpg.Connection, prefix: str, ref: str, status: str) -> Partner:
    if status not in STATUSES:
        raise PartnerError(f"status must be one of {', '.join(STATUSES)}")
    async with conn.transaction():
        p = await _live(conn, ref)
        if p.status == status:
            return p  # nothing changed, nothing to record
        data = ev.PartnerStatusChanged(partner_id=p.partner_id, status=status, previous=p.status)
        await _append(conn, prefix, data, p.tenant)
        return await get(conn, p.partner_id)


async def delete(conn: asyncpg.Connection, prefix: str, ref: str) -> Partner:
    """Soft delete: the partner and its history stay; its token hash is removed."""
    async with conn.transaction():
        p = await _live(conn, ref)
        await conn.execute("DELETE FROM partner_tokens WHERE partner_id = $1", p.partner_id)
        await _append(conn, prefix, ev.PartnerDeleted(partner_id=p.partner_id), p.tenant)
        return await get(conn, p.partner_id)
