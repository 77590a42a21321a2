"""The API's reads: the log (pages, one event, a chain), the read models (jobs, deliveries,
partners), dead letters and the figures of the overview."""

from __future__ import annotations

import base64
from typing import Any, Final

import asyncpg
import msgspec

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.eventlog import LoggedEvent
from hookbus_common.events import ReplaySelection

from . import redact, replayselect
from .config import shown_url
from .schemas import (
    Attempt,
    Chain,
    DeadLetters,
    DeliveryDetail,
    DeliveryItem,
    EventDetail,
    EventItem,
    JobDetail,
    JobItem,
    Page,
    PartnerItem,
    Rate,
)

_JOB_ENDS: Final = (ev.JobSucceeded.TYPE, ev.JobFailed.TYPE, ev.JobInterrupted.TYPE)
_JOB_TYPES: Final = (ev.JobRequested.TYPE, ev.JobRequestedV2.TYPE, ev.JobStarted.TYPE, *_JOB_ENDS)


def item(e: LoggedEvent) -> EventItem:
    raw = e.event
    return EventItem(
        seq=e.seq,
        id=raw.id,
        type=raw.type,
        source=raw.source,
        time=raw.time,
        correlationid=raw.correlationid,
        causationid=raw.causationid,
        tenant=raw.tenant,
        subject=raw.subject,
        bus_subject=e.bus_subject,
        data=redact.data(msgspec.json.decode(raw.data)),
    )


async def events_page(
    conn: asyncpg.Connection,
    sel: ReplaySelection,
    *,
    after: int | None,
    before: int | None,
    limit: int,
) -> Page[EventItem]:
    rows = await replayselect.page(conn, sel, after=after, before=before, limit=limit)
    items = [item(r) for r in rows]
    full = len(items) == limit
    if after is not None:
        # Oldest first: the next page starts after the last one shown (or after `after`
        # again when nothing is there yet, to follow the log as it grows).
        return Page(items=items, next_after=items[-1].seq if items else after)
    return Page(items=items, next_before=items[-1].seq if items and full else None)


async def event_detail(conn: asyncpg.Connection, event_id: str) -> EventDetail | None:
    row = await conn.fetchrow(
        "SELECT seq, id, type, source, subject, bus_subject, tenant, correlation_id,"
        " causation_id, time, data, raw_body FROM events WHERE id = $1",
        event_id,
    )
    if row is None:
        return None
    e = item(eventlog._logged(row))
    body = eventlog.body_of(row["type"], row["data"], row["raw_body"])
    text: str | None = None
    if body is not None:
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            text = None
    hdrs = e.data.get("headers") if isinstance(e.data, dict) else None
    if hdrs is None and isinstance(e.data, dict) and isinstance(e.data.get("webhook"), dict):
        hdrs = e.data["webhook"].get("headers")
    return EventDetail(
        event=e,
        headers=dict(hdrs) if isinstance(hdrs, dict) else {},
        raw_body=text,
        raw_body_base64=base64.b64encode(body).decode() if body is not None else None,
        raw_body_bytes=len(body) if body is not None else 0,
    )


async def chain(conn: asyncpg.Connection, event_id: str) -> Chain | None:
    rows = await eventlog.chain(conn, event_id)
    if not rows:
        return None
    return Chain(correlationid=rows[0].event.correlationid, events=[item(r) for r in rows])


# ------------------------------------------------------------------ read models

_JOB_COLUMNS = (
    "job_id, kind, rule, correlation_id, status, attempts, exit_code, duration_ms,"
    " requested_at, updated_at, last_seq"
)
_DELIVERY_COLUMNS = (
    "delivery_id, url, rule, tenant, correlation_id, status, attempts, last_status_code,"
    " last_error, requested_at, updated_at, last_seq"
)


def _cursor(after: int | None, before: int | None) -> tuple[str, str]:
    """The condition and order of a read-model page keyed by ``last_seq`` ($1, $2)."""
    cond = "($1::bigint IS NULL OR last_seq > $1) AND ($2::bigint IS NULL OR last_seq < $2)"
    return cond, "last_seq" if after is not None else "last_seq DESC"


def _page(items: list[Any], after: int | None, limit: int) -> Page[Any]:
    if after is not None:
        return Page(items=items, next_after=items[-1].last_seq if items else after)
    return Page(items=items, next_before=items[-1].last_seq if len(items) == limit else None)


async def jobs_page(
    conn: asyncpg.Connection,
    *,
    status: str | None,
    rule: str | None,
    after: int | None,
    before: int | None,
    limit: int,
) -> Page[JobItem]:
    cond, order = _cursor(after, before)
    rows = await conn.fetch(
        f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {cond}"
        " AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR rule = $4)"
        f" ORDER BY {order} LIMIT $5",
        after, before, status, rule, limit,
    )  # fmt: skip
    return _page([msgspec.convert(dict(r), JobItem) for r in rows], after, limit)


async def job_detail(conn: asyncpg.Connection, job_id: str) -> JobDetail | None:
    row = await conn.fetchrow(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE job_id = $1", job_id)
    if row is None:
        return None
    job = msgspec.convert(dict(row), JobItem)
    # The job's events are in its chain (one index lookup), named by its id.
    rows = await conn.fetch(
        "SELECT seq, id, type, source, subject, bus_subject, tenant, correlation_id,"
        " causation_id, time, data FROM events WHERE correlation_id = $1"
        " AND type = ANY($2::text[]) AND data->>'job_id' = $3 ORDER BY seq",
        job.correlation_id, list(_JOB_TYPES), job_id,
    )  # fmt: skip
    events = [item(eventlog._logged(r)) for r in rows]
    end = next((e for e in reversed(events) if e.type in _JOB_ENDS), None)
    if end is None or not isinstance(end.data, dict):
        return JobDetail(job=job, events=events)
    d = end.data
    return JobDetail(
        job=job,
        output=d.get("output", ""),
        output_bytes=int(d.get("output_bytes") or 0),
        truncated=bool(d.get("truncated")),
        error=d.get("error"),
        events=events,
    )


def _delivery(row: asyncpg.Record) -> DeliveryItem:
    fields = dict(row)
    fields["url"] = shown_url(fields["url"])
    return msgspec.convert(fields, DeliveryItem)


async def deliveries_page(
    conn: asyncpg.Connection,
    *,
    status: str | None,
    tenant: str | None,
    after: int | None,
    before: int | None,
    limit: int,
) -> Page[DeliveryItem]:
    cond, order = _cursor(after, before)
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE {cond}"
        " AND ($3::text IS NULL OR status = $3) AND ($4::text IS NULL OR tenant = $4)"
        f" ORDER BY {order} LIMIT $5",
        after, before, status, tenant, limit,
    )  # fmt: skip
    return _page([_delivery(r) for r in rows], after, limit)


async def delivery_detail(conn: asyncpg.Connection, delivery_id: str) -> DeliveryDetail | None:
    row = await conn.fetchrow(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE delivery_id = $1", delivery_id
    )
    if row is None:
        return None
    delivery = _delivery(row)
    rows = await conn.fetch(
        "SELECT time, data::text AS data FROM events WHERE correlation_id = $1 AND type = $2"
        " AND data->>'delivery_id' = $3 ORDER BY seq",
        delivery.correlation_id, ev.DeliveryAttempted.TYPE, delivery_id,
    )  # fmt: skip
    attempts = []
    for r in rows:
        d = msgspec.json.decode(r["data"], type=ev.DeliveryAttempted)
        attempts.append(
            Attempt(
                attempt=d.attempt,
                time=r["time"],
                status_code=d.status_code,
                error=d.error,
                duration_ms=d.duration_ms,
                response_body=d.response_body,
                next_attempt_at=d.next_attempt_at,
            )
        )
    return DeliveryDetail(delivery=delivery, attempts=attempts)


async def dead_letters(conn: asyncpg.Connection, *, limit: int) -> DeadLetters:
    rows = await conn.fetch(
        f"SELECT {_DELIVERY_COLUMNS} FROM deliveries WHERE status = 'dead'"
        " ORDER BY last_seq DESC LIMIT $1",
        limit,
    )
    sel = ReplaySelection(type=ev.MessageDeadLettered.TYPE)
    messages = await replayselect.page(conn, sel, limit=limit)
    return DeadLetters(
        deliveries=[_delivery(r) for r in rows], messages=[item(m) for m in messages]
    )


async def partners(conn: asyncpg.Connection, *, include_deleted: bool) -> list[PartnerItem]:
    rows = await conn.fetch(
        "SELECT partner_id, name, description, tenant, status, created_at, modified_at,"
        " deleted_at FROM partners WHERE $1 OR deleted_at IS NULL ORDER BY name, partner_id",
        include_deleted,
    )
    return [msgspec.convert(dict(r), PartnerItem) for r in rows]


# --------------------------------------------------------------------- overview


async def rates(conn: asyncpg.Connection) -> list[Rate]:
    """Events by type over the last hour and 5 minutes (the ``events_time`` index bounds it)."""
    rows = await conn.fetch(
        "SELECT type, count(*) AS last_hour,"
        " count(*) FILTER (WHERE time >= now() - interval '5 minutes') AS last_5m"
        " FROM events WHERE time >= now() - interval '1 hour' GROUP BY type ORDER BY type"
    )
    return [
        Rate(
            type=r["type"].removeprefix("io.hookbus.").rsplit(".v", 1)[0],
            last_5m=r["last_5m"],
            last_hour=r["last_hour"],
        )
        for r in rows
    ]


async def failures(conn: asyncpg.Connection) -> dict[str, int]:
    names = {
        ev.JobFailed.TYPE: "jobs_failed",
        ev.JobInterrupted.TYPE: "jobs_interrupted",
        ev.DeliveryFailed.TYPE: "deliveries_failed",
        ev.DeliveryDead.TYPE: "deliveries_dead",
        ev.MessageDeadLettered.TYPE: "messages_deadlettered",
    }
    rows = await conn.fetch(
        "SELECT type, count(*) AS n FROM events WHERE time >= now() - interval '24 hours'"
        " AND type = ANY($1::text[]) GROUP BY type",
        list(names),
    )
    out = dict.fromkeys(names.values(), 0)
    for r in rows:
        out[names[r["type"]]] = r["n"]
    return out


async def by_status(conn: asyncpg.Connection, table: str) -> dict[str, int]:
    assert table in ("jobs", "deliveries")
    rows = await conn.fetch(f"SELECT status, count(*) AS n FROM {table} GROUP BY status")
    return {r["status"]: r["n"] for r in rows}
