"""Job leases in Postgres: one run of a job at a time, and knowing when a run was lost.

A run takes its job's lease before it starts and its executor renews the lease while the
run goes on. Whoever gets the job's message next reads the lease (``take``): a live one
means the job is running elsewhere; one that expired (or whose executor is known to be
dead) belongs to a run whose end is unknown. Every time is the database's ``now()``.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterable
from datetime import datetime
from typing import Any

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.eventlog import Gate, event_from_row

from . import procs
from .procs import Host

_STARTED_TYPE = ev.JobStarted.TYPE


class Owner(msgspec.Struct, frozen=True):
    """This executor process, as leases name it."""

    id: str
    host: Host
    pid: int
    started: int | None

    @classmethod
    def here(cls) -> Owner:
        pid = os.getpid()
        return cls(
            id=f"exe_{secrets.token_hex(8)}",
            host=procs.this_host(),
            pid=pid,
            started=procs.start_time(pid),
        )


class Lease(msgspec.Struct, frozen=True):
    job_id: str
    request_id: str
    attempt: int
    owner: str
    host: str
    hostname: str
    owner_pid: int
    owner_started: int | None
    pgid: int | None
    pgid_started: int | None
    expires_at: datetime
    ended: bool
    live: bool
    """Not ended and not expired (by the database's clock)."""

    @classmethod
    def from_row(cls, row: asyncpg.Record) -> Lease:
        return cls(**{f: row[f] for f in cls.__struct_fields__})


class Acquired(msgspec.Struct, frozen=True):
    """The lease is ours: run the job as ``attempt``."""

    attempt: int
    started: bool = False
    """Its job.started is recorded already, with the lease (``fresh_gate``)."""


class Held(msgspec.Struct, frozen=True):
    """A live run holds the lease (this executor's own, or another's)."""

    lease: Lease


class Lost(msgspec.Struct, frozen=True):
    """The lease is ours now, taken from a run whose end is unknown (``previous``): that
    run must be recorded as interrupted before anything else happens to the job."""

    previous: Lease


class Finished(msgspec.Struct, frozen=True):
    """The job's terminal event is recorded: nothing to do."""


Claim = Acquired | Held | Lost | Finished

_COLUMNS = (
    "job_id, request_id, attempt, owner, host, hostname, owner_pid, owner_started, pgid,"
    " pgid_started, expires_at, ended_at IS NOT NULL AS ended,"
    " (ended_at IS NULL AND expires_at > now()) AS live"
)

# Take the lease for ``owner`` as run ``$3`` (a fresh run: no process recorded yet).
_OWN = (
    "UPDATE job_leases SET attempt = $3, owner = $4, host = $5, hostname = $6,"
    " owner_pid = $7, owner_started = $8, pgid = NULL, pgid_started = NULL,"
    " acquired_at = now(), expires_at = now() + make_interval(secs => $9),"
    " ended_at = NULL, outcome = NULL WHERE job_id = $1 AND request_id = $2"
)


def _owner_args(owner: Owner, ttl: float) -> tuple[Any, ...]:
    return (owner.id, owner.host.id, owner.host.name, owner.pid, owner.started, ttl)


async def _exists(conn: asyncpg.Connection, event_id: str) -> bool:
    return bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM events WHERE id = $1)", event_id))


async def _prior_attempts(conn: asyncpg.Connection, request: ev.Event[Any]) -> int:
    """The highest attempt a job.started of this request records (0: never started).

    A job with no lease row may still have run: started by an executor from before
    leases, whose message came back after it died.
    """
    value = await conn.fetchval(
        "SELECT max((data->>'attempt')::int) FROM events WHERE correlation_id = $1"
        " AND type = $2 AND causation_id = $3",
        request.correlationid,
        _STARTED_TYPE,
        request.id,
    )
    return int(value or 0)


def _holder_alive(lease: Lease, owner: Owner, running_here: bool) -> bool:
    """Whether the run holding ``lease`` goes on. Ours, or another executor's on this
    host, is known for certain (is its process alive?); elsewhere only the lease's expiry
    tells. A live executor of this host keeps its runs even past their expiry (it could
    not reach Postgres to renew them): it is running them."""
    if lease.owner == owner.id:
        return running_here
    if lease.host == owner.host.id:
        return procs.alive(lease.owner_pid, lease.owner_started)
    return lease.live


# A job seen for the first time — no lease row, never started, not finished — is the
# common case: its lease is taken in this one statement, as run 1. Anything else (it
# returns no row) goes through ``take``'s transaction.
# A job no run has touched yet taken as run 1: run alone (``take_fresh``), or as the gate
# of the job.started event's append (``fresh_gate``, ``eventlog.Gate``), so that the lease
# and the start are recorded in one statement, or neither is.
_FRESH_GATE = """
INSERT INTO job_leases (job_id, request_id, attempt, owner, host, hostname, owner_pid,
                        owner_started, expires_at)
SELECT {}, {}, 1, {}, {}, {}, {}, {}, now() + make_interval(secs => {})
WHERE NOT EXISTS (SELECT 1 FROM job_leases WHERE job_id = {})
  AND NOT EXISTS (SELECT 1 FROM events WHERE id = {})
  AND NOT EXISTS (SELECT 1 FROM events WHERE correlation_id = {} AND type = {}
                  AND causation_id = {})
ON CONFLICT (job_id) DO NOTHING
RETURNING attempt
"""


def fresh_gate(
    request: ev.Event[Any], job_id: str, owner: Owner, ttl: float, *, terminal_id: str
) -> Gate:
    """Take the lease of a job no run has touched yet as run 1 (``take_fresh``), as the
    gate of recording its job.started: appended with that gate, the start is recorded
    only if the lease was taken, in the same round trip."""
    return Gate(
        _FRESH_GATE,
        (job_id, request.id, *_owner_args(owner, ttl), job_id, terminal_id,
         request.correlationid, _STARTED_TYPE, request.id),
    )  # fmt: skip


async def take_fresh(
    conn: asyncpg.Connection,
    request: ev.Event[Any],
    job_id: str,
    owner: Owner,
    ttl: float,
    *,
    terminal_id: str,
) -> Acquired | None:
    """Take the lease of a job no run has touched yet, in one round trip; ``None`` when
    the job has a history (``take`` decides then)."""
    gate = fresh_gate(request, job_id, owner, ttl, terminal_id=terminal_id)
    attempt = await conn.fetchval(gate.alone(), *gate.args)
    return None if attempt is None else Acquired(attempt)


async def take(
    conn: asyncpg.Connection,
    request: ev.Event[Any],
    job_id: str,
    owner: Owner,
    ttl: float,
    *,
    running_here: bool,
    acted_here: int | None,
    terminal_id: str,
) -> Claim:
    """Decide, under the lease row's lock, what becomes of a job whose message we got.

    ``running_here`` says whether this process runs the job right now, ``acted_here``
    which attempt of it this process last started the action of. A lease whose run never
    started its action (no job.started recorded, or ours and not started here) is taken
    as that same attempt, with nothing to record.
    """
    async with conn.transaction():
        while True:
            row = await conn.fetchrow(
                f"SELECT {_COLUMNS} FROM job_leases WHERE job_id = $1 FOR UPDATE", job_id
            )
            if row is not None:
                break
            prior = await _prior_attempts(conn, request)
            inserted = await conn.fetchval(
                "INSERT INTO job_leases (job_id, request_id, attempt, owner, host, hostname,"
                " owner_pid, owner_started, expires_at)"
                " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9))"
                " ON CONFLICT (job_id) DO NOTHING RETURNING attempt",
                job_id, request.id, max(prior, 1), *_owner_args(owner, ttl),
            )  # fmt: skip
            if inserted is None:
                continue  # another executor inserted it first: read theirs, locked
            # The lease row is written before a run starts, so the job cannot have
            # finished unless it finished before leases existed (then prior > 0 too).
            if await _exists(conn, terminal_id):
                await _end(conn, job_id, owner.id, "finished")
                return Finished()
            if prior == 0:
                return Acquired(1)
            # Who ran it is not known: no host, so no process of it is looked for.
            previous = Lease(
                job_id=job_id, request_id=request.id, attempt=prior, owner="", host="",
                hostname="", owner_pid=0, owner_started=None, pgid=None, pgid_started=None,
                expires_at=datetime.min, ended=False, live=False,
            )  # fmt: skip
            return Lost(previous)
        lease = Lease.from_row(row)
        if await _exists(conn, terminal_id):
            if not lease.ended and not lease.live:
                await _end(conn, job_id, lease.owner, "finished")
            return Finished()
        if lease.ended:
            # The previous run ended without finishing the job (a retried interruption).
            attempt = lease.attempt + 1
            await conn.execute(_OWN, job_id, lease.request_id, attempt, *_owner_args(owner, ttl))
            return Acquired(attempt)
        if _holder_alive(lease, owner, running_here):
            return Held(lease)
        await conn.execute(_OWN, job_id, lease.request_id, lease.attempt, *_owner_args(owner, ttl))
        started_id = ev.derived_id(lease.request_id, f"started/{lease.attempt}")
        never_acted = lease.owner == owner.id and acted_here != lease.attempt
        if never_acted or not await _exists(conn, started_id):
            return Acquired(lease.attempt)
        return Lost(lease)


async def _end(conn: asyncpg.Connection, job_id: str, owner_id: str, outcome: str) -> bool:
    done = await conn.fetchval(
        "UPDATE job_leases SET ended_at = now(), outcome = $3"
        " WHERE job_id = $1 AND owner = $2 AND ended_at IS NULL RETURNING true",
        job_id,
        owner_id,
        outcome,
    )
    return bool(done)


async def end(conn: asyncpg.Connection, job_id: str, owner: Owner, outcome: str) -> bool:
    """End our run's lease (its end is recorded); False if it was not ours any more."""
    return await _end(conn, job_id, owner.id, outcome)


async def release_unstarted(conn: asyncpg.Connection, job_id: str, owner: Owner) -> bool:
    """Give back a lease whose run never started its action: the next run is the same
    attempt again."""
    done = await conn.fetchval(
        "UPDATE job_leases SET ended_at = now(), outcome = 'not_started',"
        " attempt = attempt - 1 WHERE job_id = $1 AND owner = $2 AND ended_at IS NULL"
        " RETURNING true",
        job_id,
        owner.id,
    )
    return bool(done)


async def confirm(conn: asyncpg.Connection, job_id: str, owner: Owner, ttl: float) -> bool:
    """Renew one lease; False if it is not ours any more (another executor took it)."""
    return bool(await renew(conn, owner, [job_id], ttl))


async def record_spawns(
    conn: asyncpg.Connection, owner: Owner, spawned: Iterable[tuple[str, int, int | None]]
) -> None:
    """Write down the process group (and its leader's start time) of each job's running
    action, ``(job_id, pgid, pgid_started)``, in one statement."""
    rows = list(spawned)
    await conn.execute(
        "UPDATE job_leases SET pgid = s.pgid, pgid_started = s.started"
        " FROM unnest($2::text[], $3::int[], $4::int8[]) AS s(job_id, pgid, started)"
        " WHERE job_leases.job_id = s.job_id AND owner = $1 AND ended_at IS NULL",
        owner.id,
        [r[0] for r in rows],
        [r[1] for r in rows],
        [r[2] for r in rows],
    )


async def renew(
    conn: asyncpg.Connection, owner: Owner, job_ids: Iterable[str], ttl: float
) -> set[str]:
    """Renew the leases of all our running jobs in one statement; the ones still ours."""
    rows = await conn.fetch(
        "UPDATE job_leases SET expires_at = now() + make_interval(secs => $3)"
        " WHERE owner = $1 AND job_id = ANY($2::text[]) AND ended_at IS NULL RETURNING job_id",
        owner.id,
        list(job_ids),
        ttl,
    )
    return {r["job_id"] for r in rows}


async def open_on_host(conn: asyncpg.Connection, owner: Owner) -> list[Lease]:
    """Unended leases of this host held by other executor processes."""
    rows = await conn.fetch(
        f"SELECT {_COLUMNS} FROM job_leases WHERE host = $1 AND ended_at IS NULL"
        " AND owner <> $2 ORDER BY job_id",
        owner.host.id,
        owner.id,
    )
    return [Lease.from_row(r) for r in rows]


async def adopt(conn: asyncpg.Connection, lease: Lease, owner: Owner, ttl: float) -> bool:
    """Take over ``lease`` from its dead owner, unless someone did first."""
    done = await conn.fetchval(
        "UPDATE job_leases SET owner = $3, host = $4, hostname = $5, owner_pid = $6,"
        " owner_started = $7, expires_at = now() + make_interval(secs => $8)"
        " WHERE job_id = $1 AND owner = $2 AND ended_at IS NULL RETURNING true",
        lease.job_id,
        lease.owner,
        *_owner_args(owner, ttl),
    )
    return bool(done)


async def started_recorded(conn: asyncpg.Connection, lease: Lease) -> bool:
    return await _exists(conn, ev.derived_id(lease.request_id, f"started/{lease.attempt}"))


async def terminal_recorded(conn: asyncpg.Connection, lease: Lease, step: str) -> bool:
    return await _exists(conn, ev.derived_id(lease.request_id, step))


async def request_event(conn: asyncpg.Connection, request_id: str) -> ev.Event[Any] | None:
    """The job.requested event a lease names, from the log."""
    row = await conn.fetchrow(
        "SELECT id, source, type, time, correlation_id, causation_id, tenant, subject,"
        " data::text AS data FROM events WHERE id = $1",
        request_id,
    )
    if row is None:
        return None
    return event_from_row(row)
