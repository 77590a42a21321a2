"""The event log: idempotent appends (with their outbox rows) and the queries people run."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from . import events as ev
from .events import Event, RawEvent

# One statement, one round trip: insert the batch, skip ids (and delivery keys) already
# recorded, and queue what was inserted for the bus in the same transaction. Read-model
# changes (``readmodels.fragments``) join it as further parts of the same statement.
_INSERT_HEAD = """
WITH {gate}ins AS (
    INSERT INTO events (id, type, source, subject, bus_subject, tenant, correlation_id,
                        causation_id, time, dedupe_key, data, raw_body, traceparent,
                        tracestate)
    {rows}
    ON CONFLICT DO NOTHING
    RETURNING seq, id
), queued AS (
    INSERT INTO outbox (seq) SELECT seq FROM ins
)"""
# A batch: one array per column. A single event (most commits at low rates): plain
# parameters, which cost Postgres and the client less than fourteen arrays of one.
_ROWS_MANY = """SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[],
                         $6::text[], $7::text[], $8::text[], $9::timestamptz[], $10::text[],
                         $11::json[], $12::bytea[], $13::text[], $14::text[])"""
_ROWS_ONE = """VALUES ($1::text, $2::text, $3::text, $4::text, $5::text, $6::text, $7::text,
            $8::text, $9::timestamptz, $10::text, $11::json, $12::bytea, $13::text,
            $14::text)"""
_INSERT_TAIL = "\nSELECT seq, id FROM ins"
_FIRST_EXTRA_PARAM = 15
# A gated insert: the rows go in only if the gate (a statement part before them, run in
# the same statement) returned a row.
_GATED = "SELECT * FROM ({rows}) AS r WHERE EXISTS (SELECT 1 FROM gate)"


def _numbered(sql: str, first: int) -> tuple[str, int]:
    """``sql`` with its ``{}`` numbered from ``$first`` on; and the next number."""
    count = sql.count("{}")
    return sql.format(*(f"${n}" for n in range(first, first + count))), first + count


@functools.lru_cache(maxsize=256)
def _statement(ctes: tuple[str, ...], one: bool, gate: str | None = None) -> str:
    """The insert statement (of one event, or of arrays) with ``ctes`` joined, and the
    ``gate`` before them: their ``{}`` numbered from $15 on (the gate's last)."""
    rows = _ROWS_ONE if one else _ROWS_MANY
    numbered, after = _numbered(",\n".join(ctes), _FIRST_EXTRA_PARAM)
    head = _INSERT_HEAD
    if gate is not None:
        rows = _GATED.replace("{rows}", rows)
        head = head.replace("{gate}", f"gate AS ({_numbered(gate, after)[0]}), ")
    head = head.replace("{gate}", "").replace("{rows}", rows)
    if not ctes:
        return head + _INSERT_TAIL
    return f"{head}, {numbered}{_INSERT_TAIL}"


_COLUMNS = (
    "seq, id, type, source, subject, bus_subject, tenant, correlation_id, causation_id, time,"
    " data, traceparent, tracestate"
)


class Pending(msgspec.Struct, frozen=True):
    """An event about to be appended, with what only inbound webhooks carry."""

    event: Event[Any]
    dedupe_key: str | None = None
    raw_body: bytes | None = None


class _Payload(msgspec.Struct):
    payload: msgspec.Raw = msgspec.Raw(b"")


_payload_of = msgspec.json.Decoder(_Payload).decode


def _kept_in_data(data: object, body: bytes) -> bool:
    """Whether ``body`` is, byte for byte, the payload embedded in the event's data — a
    JSON object or array as sent, which is what most webhooks are. The ``data`` column
    keeps its text exactly as written (json, not jsonb), so the body is stored once and
    ``raw_body`` stays NULL; ``body_of`` reads it back."""
    return (
        isinstance(data, ev.WebhookReceived)
        and body[:1] in (b"{", b"[")
        and body[-1:] in (b"}", b"]")
        and bytes(data.payload) == body
    )


def body_of(event_type: str, data: str | bytes, raw_body: bytes | None) -> bytes | None:
    """An inbound webhook's exact body from its row: ``raw_body`` when the log kept it
    apart (a body that is not plain JSON: a form, text, whitespace around the JSON),
    else the payload in ``data``, which is the body as sent."""
    if raw_body is not None:
        return bytes(raw_body)
    if event_type != ev.WebhookReceived.TYPE:
        return None
    ev.allow_deep_payloads()  # whatever the receiver accepted decodes here
    payload = bytes(_payload_of(data).payload)
    return payload or None


class Gate(msgspec.Struct, frozen=True):
    """A statement part an append depends on (``insert``'s ``gate``): ``sql`` is a
    statement (such as an ``INSERT … RETURNING``) whose parameters are written ``{}``,
    one per value of ``args``, in order."""

    sql: str
    args: tuple[Any, ...] = ()

    def alone(self) -> str:
        """``sql`` as a statement of its own, its parameters numbered from ``$1``."""
        return _numbered(self.sql, 1)[0]


class Appended(msgspec.Struct, frozen=True):
    seq: int
    event: Event[Any]
    bus_subject: str
    payload: bytes  # the encoded envelope, as published


async def insert(
    conn: asyncpg.Connection,
    prefix: str,
    batch: Sequence[Pending],
    *,
    ctes: Sequence[str] = (),
    args: Sequence[Sequence[Any]] = (),
    gate: Gate | None = None,
) -> tuple[list[Appended], list[Appended]]:
    """Append a batch; returns (inserted, already recorded) — ids make this idempotent.

    ``ctes`` and ``args`` are further parts of the statement and their parameters
    (``readmodels.fragments``), run only for the events inserted. With a ``gate``, the
    batch is appended only if the gate returns a row, in the same statement: a batch
    the gate held back is returned as not inserted, like one already recorded."""
    cols: list[list[Any]] = [[] for _ in range(14)]
    encoded: dict[str, Appended] = {}
    for p in batch:
        e = p.event
        subject = e.bus_subject(prefix)
        data = ev.encode_data(e.data)
        raw = p.raw_body
        if raw is not None and _kept_in_data(e.data, raw):
            raw = None
        values = (
            e.id, e.type, e.source, e.subject, subject, e.tenant, e.correlationid,
            e.causationid, e.time, p.dedupe_key, data.decode(), raw, e.traceparent,
            e.tracestate,
        )  # fmt: skip
        for col, value in zip(cols, values, strict=True):
            col.append(value)
        encoded[e.id] = Appended(
            seq=0, event=e, bus_subject=subject, payload=ev.encode_around(e, data)
        )
    one = len(batch) == 1
    params = [col[0] for col in cols] if one else cols
    if gate is None:
        rows = await conn.fetch(_statement(tuple(ctes), one), *params, *args)
    else:
        rows = await conn.fetch(_statement(tuple(ctes), one, gate.sql), *params, *args, *gate.args)
    inserted = []
    for row in rows:
        a = encoded.pop(row["id"])
        inserted.append(msgspec.structs.replace(a, seq=row["seq"]))
    return inserted, list(encoded.values())


def raw_event(row: asyncpg.Record) -> RawEvent:
    """The envelope of a row of ``events`` (its columns by their names, ``data`` as text),
    its data left as it is stored."""
    return RawEvent(
        id=row["id"],
        source=row["source"],
        type=row["type"],
        time=row["time"],
        correlationid=row["correlation_id"],
        causationid=row["causation_id"],
        tenant=row["tenant"],
        subject=row["subject"],
        data=msgspec.Raw(row["data"].encode()),
        # Absent from rows of queries that select their own columns (the API's).
        traceparent=row.get("traceparent"),
        tracestate=row.get("tracestate"),
    )


def event_from_row(row: asyncpg.Record) -> Event[Any]:
    """The envelope of a row of ``events`` with its data decoded by its type."""
    return ev.typed(raw_event(row))


class LoggedEvent(msgspec.Struct, frozen=True):
    """A row of the log, as listed by ``hookbus events`` and re-published by the relay."""

    seq: int
    bus_subject: str
    event: RawEvent

    def payload(self) -> bytes:
        return msgspec.json.encode(self.event)


def _logged(row: asyncpg.Record) -> LoggedEvent:
    return LoggedEvent(seq=row["seq"], bus_subject=row["bus_subject"], event=raw_event(row))


async def recent(
    conn: asyncpg.Connection,
    *,
    limit: int = 50,
    type_prefix: str | None = None,
    since: datetime | None = None,
) -> list[LoggedEvent]:
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events"
        " WHERE ($1::text IS NULL OR type LIKE $1 || '%')"
        " AND ($2::timestamptz IS NULL OR time >= $2)"
        " ORDER BY seq DESC LIMIT $3",
        type_prefix,
        since,
        limit,
    )
    return [_logged(r) for r in reversed(rows)]


async def chain(conn: asyncpg.Connection, event_id: str) -> list[LoggedEvent]:
    """Every event of the chain ``event_id`` belongs to, in order (any id of it works)."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM events WHERE correlation_id ="
        " (SELECT correlation_id FROM events WHERE id = $1) ORDER BY seq",
        event_id,
    )
    return [_logged(r) for r in rows]


async def exists(conn: asyncpg.Connection, event_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)", event_id))


async def ids_by_dedupe_key(conn: asyncpg.Connection, keys: Sequence[str]) -> dict[str, str]:
    rows = await conn.fetch(
        "SELECT dedupe_key, id FROM events WHERE dedupe_key = ANY($1::text[])", list(keys)
    )
    return {r["dedupe_key"]: r["id"] for r in rows}


async def raw_body(conn: asyncpg.Connection, event_id: str) -> bytes | None:
    """The exact body of the inbound webhook ``event_id`` (None for other events)."""
    row = await conn.fetchrow("SELECT type, data, raw_body FROM events WHERE id = $1", event_id)
    return None if row is None else body_of(row["type"], row["data"], row["raw_body"])


async def claim_unpublished(
    conn: asyncpg.Connection, *, older_than: float, limit: int
) -> list[LoggedEvent]:
    """Lock outbox rows left behind (older than ``older_than`` seconds); call in a transaction.

    SKIP LOCKED lets every process run a relay without two publishing the same rows.
    """
    rows = await conn.fetch(
        f"SELECT {', '.join('e.' + c.strip() for c in _COLUMNS.split(','))}"
        " FROM outbox o JOIN events e ON e.seq = o.seq"
        " WHERE o.created_at < now() - make_interval(secs => $1)"
        " ORDER BY o.seq LIMIT $2 FOR UPDATE OF o SKIP LOCKED",
        older_than,
        limit,
    )
    return [_logged(r) for r in rows]


async def has_unpublished(conn: asyncpg.Connection, *, older_than: float) -> bool:
    """Whether any outbox row is older than ``older_than`` seconds: one statement, no
    transaction, for the relay's rounds that find nothing (nearly all of them)."""
    return bool(
        await conn.fetchval(
            "SELECT EXISTS (SELECT 1 FROM outbox"
            " WHERE created_at < now() - make_interval(secs => $1))",
            older_than,
        )
    )


async def forget_published(conn: asyncpg.Connection, seqs: Sequence[int]) -> None:
    await conn.execute("DELETE FROM outbox WHERE seq = ANY($1::bigint[])", list(seqs))


async def outbox_depth(conn: asyncpg.Connection) -> int:
    return int(await conn.fetchval("SELECT count(*) FROM outbox"))
