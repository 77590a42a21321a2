"""Read models (job and delivery status, partners): a pure projection of the log, kept in step.

``project`` runs in the transaction that appends the events, and ``rebuild`` replays the
whole log through the same function, so the tables can always be thrown away and rebuilt.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from . import events as ev

_JOB_STATUS: dict[type[ev.EventData], str] = {
    ev.JobStarted: "running",
    ev.JobSucceeded: "succeeded",
    ev.JobFailed: "failed",
    # A retrying interruption is followed by the next attempt's job.started (running).
    ev.JobInterrupted: "interrupted",
}
_DELIVERY_STATUS: dict[type[ev.EventData], str] = {
    ev.DeliveryAttempted: "retrying",
    ev.DeliverySucceeded: "succeeded",
    ev.DeliveryFailed: "failed",
    ev.DeliveryDead: "dead",
}


async def _apply(
    conn: asyncpg.Connection, seq: int, data: ev.EventData, correlation: str, time: datetime
) -> None:
    match data:
        case ev.JobRequested() | ev.JobRequestedV2():
            # v1 requests stay in old logs; both name the kind a rebuild needs.
            await conn.execute(
                "INSERT INTO jobs (job_id, kind, rule, correlation_id, status, requested_at,"
                " updated_at, last_seq) VALUES ($1, $2, $3, $4, 'requested', $5, $5, $6)"
                " ON CONFLICT (job_id) DO NOTHING",
                data.job_id, data.kind, data.rule, correlation, time, seq,
            )  # fmt: skip
        case ev.JobStarted() | ev.JobSucceeded() | ev.JobFailed() | ev.JobInterrupted():
            finished = isinstance(data, ev.JobFinished)
            await conn.execute(
                "UPDATE jobs SET status = $2, attempts = greatest(attempts, $3),"
                " exit_code = CASE WHEN $6 THEN $4 ELSE exit_code END,"
                " duration_ms = CASE WHEN $6 THEN $5 ELSE duration_ms END,"
                " updated_at = $7, last_seq = $8 WHERE job_id = $1 AND last_seq < $8",
                data.job_id,
                _JOB_STATUS[type(data)],
                data.attempt,
                data.exit_code if isinstance(data, ev.JobFinished) else None,
                data.duration_ms if isinstance(data, ev.JobFinished) else None,
                finished,
                time,
                seq,
            )
        case ev.DeliveryRequested():
            await conn.execute(
                "INSERT INTO deliveries (delivery_id, url, rule, tenant, correlation_id, status,"
                " requested_at, updated_at, last_seq)"
                " VALUES ($1, $2, $3, $4, $5, 'pending', $6, $6, $7)"
                " ON CONFLICT (delivery_id) DO NOTHING",
                data.delivery_id, data.url, data.rule, data.tenant, correlation, time, seq,
            )  # fmt: skip
        case ev.DeliveryOutcome():
            await conn.execute(
                "UPDATE deliveries SET status = $2, attempts = greatest(attempts, $3),"
                " last_status_code = $4, last_error = $5, updated_at = $6, last_seq = $7"
                " WHERE delivery_id = $1 AND last_seq < $7",
                data.delivery_id, _DELIVERY_STATUS[type(data)], data.attempt,
                data.status_code, data.error, time, seq,
            )  # fmt: skip
        case ev.PartnerCreated():
            await conn.execute(
                "INSERT INTO partners (partner_id, name, description, tenant, status, validation,"
                " token_id, created_at, modified_at, last_seq)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9)"
                " ON CONFLICT (partner_id) DO NOTHING",
                data.partner_id, data.name, data.description, data.tenant, data.status,
                msgspec.json.encode(data.validation).decode(), data.token_id, time, seq,
            )  # fmt: skip
        case ev.PartnerUpdated():
            await conn.execute(
                "UPDATE partners SET name = $2, description = $3, tenant = $4, validation = $5,"
                " modified_at = $6, last_seq = $7 WHERE partner_id = $1 AND last_seq < $7",
                data.partner_id, data.name, data.description, data.tenant,
                msgspec.json.encode(data.validation).decode(), time, seq,
            )  # fmt: skip
        case ev.PartnerTokenRotated():
            await conn.execute(
                "UPDATE partners SET token_id = $2, modified_at = $3, last_seq = $4"
                " WHERE partner_id = $1 AND last_seq < $4",
                data.partner_id, data.token_id, time, seq,
            )  # fmt: skip
        case ev.PartnerStatusChanged():
            await conn.execute(
                "UPDATE partners SET status = $2, modified_at = $3, last_seq = $4"
                " WHERE partner_id = $1 AND last_seq < $4",
                data.partner_id, data.status, time, seq,
            )  # fmt: skip
        case ev.PartnerDeleted():
            await conn.execute(
                "UPDATE partners SET deleted_at = $2, modified_at = $2, last_seq = $3"
                " WHERE partner_id = $1 AND last_seq < $3",
                data.partner_id, time, seq,
            )  # fmt: skip
        case _:
            pass


# Events that change a read model; any other batch needs no projection (and so no
# transaction beyond its single INSERT statement).
PROJECTED: tuple[type[ev.EventData], ...] = (
    ev.JobRequested,
    ev.JobRequestedV2,
    ev.JobStarted,
    ev.JobSucceeded,
    ev.JobFailed,
    ev.JobInterrupted,
    ev.DeliveryRequested,
    ev.DeliveryOutcome,
    ev.PartnerCreated,
    ev.PartnerUpdated,
    ev.PartnerTokenRotated,
    ev.PartnerStatusChanged,
    ev.PartnerDeleted,
)


def changes_read_models(data: ev.EventData) -> bool:
    return isinstance(data, PROJECTED)


async def project(conn: asyncpg.Connection, appended: Sequence[Any]) -> None:
    """Apply freshly appended events (``eventlog.Appended``) to the read models."""
    for a in appended:
        await _apply(conn, a.seq, a.event.data, a.event.correlationid, a.event.time)


async def rebuild(conn: asyncpg.Connection, *, batch: int = 1000) -> int:
    """Empty the read models and replay the whole log into them; returns events replayed."""
    count = 0
    async with conn.transaction():
        # partner_tokens is not a read model (token hashes are never in events): kept.
        await conn.execute("TRUNCATE jobs, deliveries, partners")
        last = 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, type, data::text AS data, correlation_id, time FROM events"
                " WHERE seq > $1 AND (type LIKE 'io.hookbus.job.%'"
                " OR type LIKE 'io.hookbus.delivery.%' OR type LIKE 'io.hookbus.partner.%')"
                " ORDER BY seq LIMIT $2",
                last,
                batch,
            )
            if not rows:
                return count
            for r in rows:
                data = ev.decode_data(r["type"], r["data"].encode())
                await _apply(conn, r["seq"], data, r["correlation_id"], r["time"])
                count += 1
            last = rows[-1]["seq"]
