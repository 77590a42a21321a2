"""Dead letters sent again: deliveries that ended without success (dead after their last
attempt, or failed for good) requested anew, as ``hookbus dlq replay`` and the API's
``POST /api/dlq/…/replay`` do.

A replay is a new delivery of the same request, linked to the one replayed: its id is
derived from the original and the replay, its ``webhook-id`` is the original message id
(so a receiver that already took the message can drop it), and a
``delivery.replayed`` event records who asked and why.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import asyncpg
import msgspec

from hookbus_common import eventlog, readmodels
from hookbus_common import events as ev
from hookbus_common.errors import ConflictError, InvalidError, NotFoundError
from hookbus_common.eventlog import Appended, Pending

from .replayselect import parse_time

DEAD_LETTERS = ("dead", "failed")
CLI_SOURCE = "/hookbus/cli"

_REQUESTED = "io.hookbus.delivery.requested.v1"
_REPLAYED = "io.hookbus.delivery.replayed.v1"


class Letter(Protocol):
    """What a replay needs of a delivery: its id and its request event's id."""

    @property
    def delivery_id(self) -> str: ...

    @property
    def request_id(self) -> str: ...


class DeadLetter(msgspec.Struct, frozen=True, kw_only=True):
    delivery_id: str
    request_id: str
    status: str


_OUT: dict[str, Any] = {"frozen": True, "kw_only": True}


class ReplayDeadLetters(msgspec.Struct, **_OUT):
    """Which dead and failed deliveries to request again (those not replayed before):
    narrowed by endpoint (or notification channel), tenant and since, or ``all``."""

    endpoint: str | None = None
    tenant: str | None = None
    since: str | None = None
    all: bool = False
    dry_run: bool = False
    reason: str | None = None


class ReplayDelivery(msgspec.Struct, **_OUT):
    """Why, for the log (optional)."""

    reason: str | None = None


class Replayed(msgspec.Struct, **_OUT):
    replay_of: str
    delivery_id: str


class DeadLettersReplayed(msgspec.Struct, **_OUT):
    """How many deliveries were selected; on a dry run nothing more, else each new
    delivery and the one it replays."""

    selected: int
    dry_run: bool = False
    replayed: list[Replayed] = []


async def _request(conn: asyncpg.Connection, event_id: str) -> ev.Event[ev.DeliveryRequested]:
    row = await conn.fetchrow(
        "SELECT id, source, type, time, correlation_id, causation_id, tenant, subject,"
        " data::text AS data FROM events WHERE id = $1",
        event_id,
    )
    event = eventlog.event_from_row(row)
    assert isinstance(event.data, ev.DeliveryRequested)
    return event


async def replay(
    conn: asyncpg.Connection,
    prefix: str,
    chosen: Sequence[Letter],
    *,
    requested_by: str | None,
    reason: str | None = None,
    source: str = CLI_SOURCE,
) -> list[str]:
    """Request each delivery of ``chosen`` again (one transaction); the new delivery ids.

    The requests reach the bus through the outbox relay every service process runs, so
    this needs Postgres only."""
    new_ids, _ = await replay_events(
        conn, prefix, chosen, requested_by=requested_by, reason=reason, source=source
    )
    return new_ids


async def replay_events(
    conn: asyncpg.Connection,
    prefix: str,
    chosen: Sequence[Letter],
    *,
    requested_by: str | None,
    reason: str | None = None,
    source: str = CLI_SOURCE,
) -> tuple[list[str], list[Appended]]:
    """As :func:`replay`, also answering the events appended (to publish them now)."""
    replay_id = ev.new_id("dlr")
    batch: list[Pending] = []
    new_ids = []
    for d in chosen:
        original = await _request(conn, d.request_id)
        req = original.data
        new_id = ev.derived_id(req.delivery_id, f"replay/{replay_id}", prefix="dlv")
        data = msgspec.structs.replace(
            req,
            delivery_id=new_id,
            replay_of=req.delivery_id,
            # The message id receivers dedupe on stays the original's.
            message_id=req.message_id or req.delivery_id,
        )
        request = ev.make_event(
            data,
            source=source,
            id=ev.derived_id(original.id, f"replay/{replay_id}"),
            cause=original,
        )
        audit = ev.make_event(
            ev.DeliveryReplayed(
                replay_id=replay_id,
                delivery_id=new_id,
                replay_of=req.delivery_id,
                tenant=req.tenant,
                endpoint=req.endpoint or req.notification,
                requested_by=requested_by,
                reason=reason,
            ),
            source=source,
            id=ev.derived_id(original.id, f"replayed/{replay_id}"),
            cause=original,
            subject=new_id,
        )
        batch += [Pending(audit), Pending(request)]
        new_ids.append(new_id)
    appended: list[Appended] = []
    if batch:
        async with conn.transaction():
            appended, _ = await eventlog.insert(conn, prefix, batch)
            await readmodels.project(conn, appended)
    return new_ids, appended


# ----------------------------------------------------------- choosing dead letters

_SELECT = f"""
SELECT d.delivery_id, d.status, r.id AS request_id
FROM deliveries d
JOIN LATERAL (
    SELECT e.id, e.data FROM events e
    WHERE e.correlation_id = d.correlation_id AND e.type = '{_REQUESTED}'
      AND e.data->>'delivery_id' = d.delivery_id
    ORDER BY e.seq LIMIT 1
) r ON true
"""


async def one(conn: asyncpg.Connection, delivery_id: str) -> DeadLetter:
    """The dead or failed delivery ``delivery_id``: NotFoundError when there is none,
    ConflictError when it did not end dead or failed."""
    row = await conn.fetchrow(_SELECT + " WHERE d.delivery_id = $1", delivery_id)
    if row is None:
        raise NotFoundError(f"no delivery {delivery_id}")
    if row["status"] not in DEAD_LETTERS:
        raise ConflictError(
            f"{delivery_id} is {row['status']}, not dead or failed: nothing to replay"
        )
    return DeadLetter(
        delivery_id=row["delivery_id"], request_id=row["request_id"], status=row["status"]
    )


async def select(
    conn: asyncpg.Connection,
    *,
    endpoint: str | None = None,
    tenant: str | None = None,
    since: datetime | None = None,
) -> list[DeadLetter]:
    """Dead and failed deliveries not replayed before, newest change first. Running a
    replay of them twice sends once."""
    rows = await conn.fetch(
        _SELECT
        + f"""
WHERE d.status = ANY($1::text[])
  AND ($2::text IS NULL OR r.data->>'endpoint' = $2 OR r.data->>'notification' = $2)
  AND ($3::text IS NULL OR d.tenant = $3)
  AND ($4::timestamptz IS NULL OR d.updated_at >= $4)
  AND NOT EXISTS (SELECT 1 FROM events x WHERE x.correlation_id = d.correlation_id
                  AND x.type = '{_REPLAYED}' AND x.data->>'replay_of' = d.delivery_id)
ORDER BY d.updated_at DESC, d.delivery_id""",
        list(DEAD_LETTERS),
        endpoint,
        tenant,
        since,
    )
    return [
        DeadLetter(delivery_id=r["delivery_id"], request_id=r["request_id"], status=r["status"])
        for r in rows
    ]


def parse_bulk(body: bytes) -> ReplayDeadLetters:
    """The bulk replay's body; InvalidError says what is wrong (a selection is needed)."""
    try:
        req = msgspec.json.decode(body or b"{}", type=ReplayDeadLetters)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidError(f"body: {exc}") from None
    narrowed = any((req.endpoint, req.tenant, req.since))
    if narrowed == req.all:
        raise InvalidError(
            "body: select with endpoint, tenant or since, or give all: true (not both)"
        )
    return req


def parse_one(body: bytes) -> ReplayDelivery:
    try:
        return msgspec.json.decode(body or b"{}", type=ReplayDelivery)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise InvalidError(f"body: {exc}") from None


def since(text: str | None, now: datetime | None = None) -> datetime | None:
    if not text:
        return None
    try:
        return parse_time(text, now or datetime.now(UTC))
    except ValueError as exc:
        raise InvalidError(f"since: {exc}") from None
