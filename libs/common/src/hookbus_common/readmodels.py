"""Read models (job and delivery status, partners, endpoint state): a pure projection of the log, kept in step.

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
    # Never ran: a newer job of its concurrency key ran instead.
    ev.JobSkipped: "skipped",
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
        case (
            ev.JobStarted() | ev.JobSucceeded() | ev.JobFailed() | ev.JobInterrupted()
            | ev.JobSkipped()
        ):  # fmt: skip
            finished = isinstance(data, ev.JobFinished)
            await conn.execute(
                "UPDATE jobs SET status = $2, attempts = greatest(attempts, $3),"
                " exit_code = CASE WHEN $6 THEN $4 ELSE exit_code END,"
                " duration_ms = CASE WHEN $6 THEN $5 ELSE duration_ms END,"
                " updated_at = $7, last_seq = $8 WHERE job_id = $1 AND last_seq < $8",
                data.job_id,
                _job_status(data),
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
        case ev.EndpointCreated():
            await conn.execute(
                "INSERT INTO endpoints (endpoint, endpoint_id, tenant, url, description, events,"
                " created_by, created_at, updated_at, last_seq)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8, $9) ON CONFLICT DO NOTHING",
                data.endpoint, data.endpoint_id, data.tenant, data.url, data.description,
                list(data.events), data.by, time, seq,
            )  # fmt: skip
        case ev.EndpointUpdated():
            await conn.execute(
                "UPDATE endpoints SET url = $2, description = $3, events = $4, updated_at = $5,"
                " last_seq = $6 WHERE endpoint_id = $1 AND last_seq < $6",
                data.endpoint_id, data.url, data.description, list(data.events), time, seq,
            )  # fmt: skip
        case ev.EndpointPaused() | ev.EndpointResumed() | ev.EndpointSecretRotated():
            await conn.execute(
                "UPDATE endpoints SET paused = CASE WHEN $2::bool IS NULL THEN paused ELSE $2"
                " END, updated_at = $3, last_seq = $4 WHERE endpoint_id = $1 AND last_seq < $4",
                data.endpoint_id,
                None if isinstance(data, ev.EndpointSecretRotated)
                else isinstance(data, ev.EndpointPaused),
                time, seq,
            )  # fmt: skip
        case ev.EndpointDeleted():
            await conn.execute("DELETE FROM endpoints WHERE endpoint_id = $1", data.endpoint_id)
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
        case ev.EndpointDisabled() | ev.EndpointEnabled():
            await conn.execute(
                "INSERT INTO endpoint_state (endpoint, disabled, reason, changed_by,"
                " changed_at, last_seq) VALUES ($1, $2, $3, $4, $5, $6)"
                " ON CONFLICT (endpoint) DO UPDATE SET disabled = $2, reason = $3,"
                " changed_by = $4, changed_at = $5, last_seq = $6"
                " WHERE endpoint_state.last_seq < $6",
                data.endpoint, isinstance(data, ev.EndpointDisabled), data.reason, data.by,
                time, seq,
            )  # fmt: skip
        case ev.ProjectCreated():
            await conn.execute(
                "INSERT INTO projects (project, repository, image, port, host_port, health,"
                " stages, labels, inspected, reason, created_at, last_seq)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)"
                " ON CONFLICT DO NOTHING",
                data.project, data.repository, data.image, data.port, data.host_port,
                None if data.health is None else msgspec.json.encode(data.health).decode(),
                msgspec.json.encode(data.stages).decode(),
                msgspec.json.encode(data.labels).decode(), data.inspected, data.reason,
                time, seq,
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
    ev.JobSkipped,
    ev.DeliveryRequested,
    ev.DeliveryOutcome,
    ev.EndpointChanged,
    ev.PartnerCreated,
    ev.PartnerUpdated,
    ev.PartnerTokenRotated,
    ev.PartnerStatusChanged,
    ev.PartnerDeleted,
    ev.EndpointDisabled,
    ev.EndpointEnabled,
    ev.ProjectCreated,
)


def _job_status(data: ev.EventData) -> str:
    # A failed attempt that another follows (the action's retries) is no end.
    if isinstance(data, ev.JobFailed) and data.retrying:
        return "retrying"
    return _JOB_STATUS[type(data)]


def changes_read_models(data: ev.EventData) -> bool:
    return isinstance(data, PROJECTED)


class Fragments(msgspec.Struct, frozen=True):
    """Read-model changes as parts of the statement that appends their events.

    ``ctes`` are ``name AS (...)`` clauses that read the appended rows from a CTE called
    ``ins`` (``seq, id``), so only events actually inserted change a table (one already
    recorded changed it then); each ``{}`` stands for the next parameter, in ``args`` order.
    """

    ctes: list[str]
    args: list[Any]


_JOBS_NEW = """jobs_new AS (
    INSERT INTO jobs (job_id, kind, rule, correlation_id, status, requested_at, updated_at,
                      last_seq)
    SELECT j.job_id, j.kind, j.rule, j.corr, 'requested', j.t, j.t, ins.seq
    FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::timestamptz[])
        AS j(event_id, job_id, kind, rule, corr, t)
    JOIN ins ON ins.id = j.event_id
    ON CONFLICT (job_id) DO NOTHING)"""

# The last inserted event of each job sets its status (a batch holds one event per job in
# practice: the executor commits each step on its own), the highest attempt its attempts.
_JOBS_CHANGED = """jobs_changed AS (
    UPDATE jobs SET status = u.status, attempts = greatest(jobs.attempts, u.attempt),
        exit_code = CASE WHEN u.finished THEN u.exit_code ELSE jobs.exit_code END,
        duration_ms = CASE WHEN u.finished THEN u.duration_ms ELSE jobs.duration_ms END,
        updated_at = u.t, last_seq = u.seq
    FROM (
        SELECT DISTINCT ON (j.job_id) j.job_id, j.status, j.exit_code, j.duration_ms,
            j.finished, j.t, ins.seq, max(j.attempt) OVER (PARTITION BY j.job_id) AS attempt
        FROM unnest({}::text[], {}::text[], {}::text[], {}::int[], {}::int[],
                    {}::float8[], {}::bool[], {}::timestamptz[])
            AS j(event_id, job_id, status, attempt, exit_code, duration_ms, finished, t)
        JOIN ins ON ins.id = j.event_id
        ORDER BY j.job_id, ins.seq DESC
    ) u
    WHERE jobs.job_id = u.job_id AND jobs.last_seq < u.seq)"""

# The same for a batch of one job event (the executor commits each step of a job on its
# own): its values as plain parameters, not one-element arrays to unnest, which cost the
# client an array encoding each and the server a set-returning scan.
_JOB_CHANGED = """jobs_changed AS (
    UPDATE jobs SET status = u.status, attempts = greatest(jobs.attempts, u.attempt),
        exit_code = CASE WHEN u.finished THEN u.exit_code ELSE jobs.exit_code END,
        duration_ms = CASE WHEN u.finished THEN u.duration_ms ELSE jobs.duration_ms END,
        updated_at = u.t, last_seq = ins.seq
    FROM (SELECT {}::text AS event_id, {}::text AS job_id, {}::text AS status,
                 {}::int AS attempt, {}::int AS exit_code, {}::float8 AS duration_ms,
                 {}::bool AS finished, {}::timestamptz AS t) u
    JOIN ins ON ins.id = u.event_id
    WHERE jobs.job_id = u.job_id AND jobs.last_seq < ins.seq)"""

_DELIVERIES_NEW = """deliveries_new AS (
    INSERT INTO deliveries (delivery_id, url, rule, tenant, correlation_id, status,
                            requested_at, updated_at, last_seq)
    SELECT d.delivery_id, d.url, d.rule, d.tenant, d.corr, 'pending', d.t, d.t, ins.seq
    FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[], {}::text[],
                {}::timestamptz[])
        AS d(event_id, delivery_id, url, rule, tenant, corr, t)
    JOIN ins ON ins.id = d.event_id
    ON CONFLICT (delivery_id) DO NOTHING)"""

# An attempt and its outcome come in one batch: each sets every column, so the last wins.
_DELIVERIES_CHANGED = """deliveries_changed AS (
    UPDATE deliveries SET status = u.status, attempts = greatest(deliveries.attempts, u.attempt),
        last_status_code = u.status_code, last_error = u.error, updated_at = u.t,
        last_seq = u.seq
    FROM (
        SELECT DISTINCT ON (d.delivery_id) d.delivery_id, d.status, d.status_code, d.error,
            d.t, ins.seq, max(d.attempt) OVER (PARTITION BY d.delivery_id) AS attempt
        FROM unnest({}::text[], {}::text[], {}::text[], {}::int[], {}::int[], {}::text[],
                    {}::timestamptz[])
            AS d(event_id, delivery_id, status, attempt, status_code, error, t)
        JOIN ins ON ins.id = d.event_id
        ORDER BY d.delivery_id, ins.seq DESC
    ) u
    WHERE deliveries.delivery_id = u.delivery_id AND deliveries.last_seq < u.seq)"""


def _columns(rows: list[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(col) for col in zip(*rows, strict=True)]


# A job of a limiting concurrency key takes its place among its key's jobs when its
# request is committed, in log order: an executor that gets a later job's message first
# still sees the earlier job waiting ahead of it (``queue``), or a newer one (``latest``).
# The executor's ``job_concurrency`` table (migration 0010) is operational state, not a
# read model: a rebuild leaves it alone. ``JOB_TERMINAL_STEP`` is the executor's
# ``outcomes.TERMINAL_STEP`` (a unit test keeps them equal).
JOB_TERMINAL_STEP = "finished"
_LIMITING = frozenset({"queue", "latest", "cancel-running"})

_CONCURRENCY_NEW = """concurrency_new AS (
    INSERT INTO job_concurrency (job_id, key, strategy, request_id, terminal_id, seq)
    SELECT c.job_id, c.key, c.strategy, c.event_id, c.terminal_id, ins.seq
    FROM unnest({}::text[], {}::text[], {}::text[], {}::text[], {}::text[])
        AS c(event_id, job_id, key, strategy, terminal_id)
    JOIN ins ON ins.id = c.event_id
    ON CONFLICT (job_id) DO NOTHING)"""


# A run's end and its lease's end are one statement: the event recording how run
# ``attempt`` of a job ended also ends that run's lease in the executor's ``job_leases``
# table (migration 0003; operational state like ``job_concurrency``, which a rebuild
# leaves alone), so the executor needs no commit of its own for it. Only an event
# actually inserted ends a lease, and only the lease of that same attempt that has not
# ended yet: a lease since taken for a later attempt is another run's.
_LEASE_OUTCOME: dict[type[ev.EventData], str] = {
    ev.JobSucceeded: "succeeded",
    ev.JobFailed: "failed",
    ev.JobInterrupted: "interrupted",
}

_LEASES_ENDED = """leases_ended AS (
    UPDATE job_leases SET ended_at = now(), outcome = l.outcome
    FROM unnest({}::text[], {}::text[], {}::int[], {}::text[])
        AS l(event_id, job_id, attempt, outcome)
    JOIN ins ON ins.id = l.event_id
    WHERE job_leases.job_id = l.job_id AND job_leases.attempt = l.attempt
      AND job_leases.ended_at IS NULL)"""


_LEASE_ENDED = """leases_ended AS (
    UPDATE job_leases SET ended_at = now(), outcome = l.outcome
    FROM (SELECT {}::text AS event_id, {}::text AS job_id, {}::int AS attempt,
                 {}::text AS outcome) l
    JOIN ins ON ins.id = l.event_id
    WHERE job_leases.job_id = l.job_id AND job_leases.attempt = l.attempt
      AND job_leases.ended_at IS NULL)"""


def _lease_end_row(e: ev.Event[Any]) -> tuple[Any, ...] | None:
    outcome = _LEASE_OUTCOME.get(type(e.data))
    if outcome is None:
        return None
    return (e.id, e.data.job_id, e.data.attempt, outcome)


async def _end_leases(conn: asyncpg.Connection, appended: Sequence[Any]) -> None:
    for a in appended:
        row = _lease_end_row(a.event)
        if row is not None:
            await conn.execute(
                "UPDATE job_leases SET ended_at = now(), outcome = $3"
                " WHERE job_id = $1 AND attempt = $2 AND ended_at IS NULL",
                *row[1:],
            )


def _concurrency_row(e: ev.Event[Any]) -> tuple[Any, ...] | None:
    d = e.data
    c = d.concurrency if isinstance(d, ev.JobRequestedV2) else None
    if c is None or c.strategy not in _LIMITING:
        return None
    return (e.id, d.job_id, c.key, c.strategy, ev.derived_id(e.id, JOB_TERMINAL_STEP))


async def _register_concurrency(conn: asyncpg.Connection, appended: Sequence[Any]) -> None:
    for a in appended:
        row = _concurrency_row(a.event)
        if row is not None:
            await conn.execute(
                "INSERT INTO job_concurrency (job_id, key, strategy, request_id, terminal_id,"
                " seq) VALUES ($2, $3, $4, $1, $5, $6) ON CONFLICT (job_id) DO NOTHING",
                *row, a.seq,
            )  # fmt: skip


def fragments(events: Sequence[ev.Event[Any]]) -> Fragments | None:
    """The read-model changes of a batch as parts of its INSERT statement: no transaction
    and no round trip beyond the one statement. ``None`` when the batch needs ``project``
    in a transaction instead: partner events, or a row created and changed in one batch
    (parts of one statement do not see each other's rows)."""
    jobs_new: list[tuple[Any, ...]] = []
    jobs_changed: list[tuple[Any, ...]] = []
    deliveries_new: list[tuple[Any, ...]] = []
    deliveries_changed: list[tuple[Any, ...]] = []
    concurrency_new: list[tuple[Any, ...]] = []
    leases_ended: list[tuple[Any, ...]] = []
    for e in events:
        match e.data:
            case ev.JobRequested() | ev.JobRequestedV2() as d:
                jobs_new.append((e.id, d.job_id, d.kind, d.rule, e.correlationid, e.time))
                if (row := _concurrency_row(e)) is not None:
                    concurrency_new.append(row)
            case ev.JobStarted() | ev.JobFinished() as d:
                fin = isinstance(d, ev.JobFinished)
                jobs_changed.append((
                    e.id, d.job_id, _job_status(d), d.attempt,
                    d.exit_code if isinstance(d, ev.JobFinished) else None,
                    d.duration_ms if isinstance(d, ev.JobFinished) else None, fin, e.time,
                ))  # fmt: skip
                if (row := _lease_end_row(e)) is not None:
                    leases_ended.append(row)
            case ev.DeliveryRequested() as d:
                deliveries_new.append(
                    (e.id, d.delivery_id, d.url, d.rule, d.tenant, e.correlationid, e.time)
                )
            case ev.DeliveryOutcome() as d:
                deliveries_changed.append((
                    e.id, d.delivery_id, _DELIVERY_STATUS[type(d)], d.attempt, d.status_code,
                    d.error, e.time,
                ))  # fmt: skip
            case _ if changes_read_models(e.data):
                return None
    if (jobs_new and jobs_changed) or (deliveries_new and deliveries_changed):
        return None
    out = Fragments([], [])
    for one, rows in ((_JOB_CHANGED, jobs_changed), (_LEASE_ENDED, leases_ended)):
        if len(rows) == 1:
            out.ctes.append(one)
            out.args.extend(rows[0])
            rows.clear()
    for sql, rows in (
        (_JOBS_NEW, jobs_new),
        (_JOBS_CHANGED, jobs_changed),
        (_DELIVERIES_NEW, deliveries_new),
        (_DELIVERIES_CHANGED, deliveries_changed),
        (_CONCURRENCY_NEW, concurrency_new),
        (_LEASES_ENDED, leases_ended),
    ):
        if rows:
            out.ctes.append(sql)
            out.args.extend(_columns(rows))
    return out


async def project(conn: asyncpg.Connection, appended: Sequence[Any]) -> None:
    """Apply freshly appended events (``eventlog.Appended``) to the read models."""
    for a in appended:
        await _apply(conn, a.seq, a.event.data, a.event.correlationid, a.event.time)
    await _register_concurrency(conn, appended)
    await _end_leases(conn, appended)


async def rebuild(conn: asyncpg.Connection, *, batch: int = 1000) -> int:
    """Empty the read models and replay the whole log into them; returns events replayed."""
    count = 0
    async with conn.transaction():
        # partner_tokens is not a read model (token hashes are never in events): kept.
        await conn.execute("TRUNCATE jobs, deliveries, partners, endpoint_state, projects")
        # endpoint_secrets is not one either (secrets are never in events): kept.
        await conn.execute("TRUNCATE endpoints")
        last = 0
        while True:
            rows = await conn.fetch(
                "SELECT seq, type, data::text AS data, correlation_id, time FROM events"
                " WHERE seq > $1 AND (type LIKE 'io.hookbus.job.%'"
                " OR type LIKE 'io.hookbus.delivery.%' OR type LIKE 'io.hookbus.partner.%'"
                " OR type LIKE 'io.hookbus.endpoint.%' OR type LIKE 'io.hookbus.project.%')"
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
