"""Concurrency keys: whether a job of a key may run now, across every executor replica.

Each decision on a key is taken in one transaction under an advisory lock on the key
(``job_concurrency``, migration 0010), so two executors never both start a ``queue``
job, nor both decide which ``latest`` job is the newest. A job that must wait is given
back to NATS (``Deferred``): it holds no place among the messages in flight. A running
job counts until its terminal event is in the log, so a run lost with its executor frees
the key once the next executor records it interrupted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable

import asyncpg
import msgspec

from hookbus_common import events as ev

log = logging.getLogger(__name__)

# The strategies that need a decision (``parallel`` runs at once, with no row).
LIMITED: frozenset[str] = frozenset({"queue", "latest", "cancel-running"})


class Admitted(msgspec.Struct, frozen=True):
    """The job may run now (it is its key's running job)."""


class Wait(msgspec.Struct, frozen=True):
    """Another job of the key runs (or, for ``queue``, an older one waits): not now."""

    reason: str


class Superseded(msgspec.Struct, frozen=True):
    """A newer job of the key runs instead (``latest``, or a newer ``cancel-running``):
    this one is skipped for good."""

    by: str


Admission = Admitted | Wait | Superseded


def limited(req: ev.JobRequestedV2) -> ev.Concurrency | None:
    """The job's concurrency, when its strategy limits anything."""
    c = req.concurrency
    return c if c is not None and c.strategy in LIMITED else None


_REGISTER = """
INSERT INTO job_concurrency (job_id, key, strategy, request_id, terminal_id, seq)
VALUES ($1, $2, $3, $4, $5,
        coalesce((SELECT seq FROM events WHERE id = $4), 9223372036854775807))
ON CONFLICT (job_id) DO NOTHING
"""

# Rows whose job's end is recorded are done: running ones (the end of a run lost with
# its executor is recorded by whichever executor gets its message next), and waiting ones
# (registered when their request was committed, then ended without a run here).
_CLOSE_ENDED = """
UPDATE job_concurrency c SET state = 'done', changed_at = now()
WHERE c.key = $1 AND c.state IN ('running', 'waiting')
  AND EXISTS (SELECT 1 FROM events e WHERE e.id = c.terminal_id)
"""


async def admit(
    conn: asyncpg.Connection, request: ev.Event[ev.JobRequestedV2], c: ev.Concurrency,
    terminal_id: str,
) -> Admission:  # fmt: skip
    """Decide, under the key's lock, whether the job runs now, waits, or is superseded."""
    job_id = request.data.job_id
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))",
                           f"hookbus.concurrency:{c.key}")  # fmt: skip
        await conn.execute(_REGISTER, job_id, c.key, c.strategy, request.id, terminal_id)
        mine = await conn.fetchrow(
            "SELECT state, seq, superseded_by FROM job_concurrency WHERE job_id = $1", job_id
        )
        assert mine is not None
        match mine["state"]:
            case "running" | "done":
                # Admitted before (a redelivery, a retry, or a run to record as lost).
                return Admitted()
            case "superseded":
                return Superseded(mine["superseded_by"] or "")
        await conn.execute(_CLOSE_ENDED, c.key)
        seq = mine["seq"]
        others = await conn.fetch(
            "SELECT job_id, state, seq FROM job_concurrency WHERE key = $1"
            " AND state IN ('waiting', 'running') AND job_id <> $2 ORDER BY seq",
            c.key,
            job_id,
        )
        running = [r["job_id"] for r in others if r["state"] == "running"]
        newer = [r["job_id"] for r in others if r["seq"] > seq]
        older_waiting = [r["job_id"] for r in others if r["state"] == "waiting" and r["seq"] < seq]
        if c.strategy in ("latest", "cancel-running") and newer:
            return await _supersede(conn, job_id, newer[-1])
        if c.strategy == "cancel-running" and running:
            # Stop what runs (its executor looks for this while it runs), and wait for
            # its end to be recorded; older waiting jobs will never run.
            await conn.execute(
                "UPDATE job_concurrency SET cancelled_by = $2, changed_at = now()"
                " WHERE job_id = ANY($1::text[]) AND cancelled_by IS NULL",
                running,
                job_id,
            )
            return Wait(f"cancelling {', '.join(running)} of concurrency key {c.key!r}")
        if running:
            return Wait(f"{running[0]} of concurrency key {c.key!r} is running")
        if c.strategy == "queue" and older_waiting:
            return Wait(f"{older_waiting[0]} of concurrency key {c.key!r} is ahead in the queue")
        await conn.execute(
            "UPDATE job_concurrency SET state = 'running', changed_at = now() WHERE job_id = $1",
            job_id,
        )
        return Admitted()


async def _supersede(conn: asyncpg.Connection, job_id: str, by: str) -> Superseded:
    await conn.execute(
        "UPDATE job_concurrency SET state = 'superseded', superseded_by = $2, changed_at = now()"
        " WHERE job_id = $1",
        job_id,
        by,
    )
    return Superseded(by)


async def cancelled_by(conn: asyncpg.Connection, job_id: str) -> str | None:
    """The newer job that asked this one's run to stop (``cancel-running``), if any."""
    value = await conn.fetchval(
        "SELECT cancelled_by FROM job_concurrency WHERE job_id = $1", job_id
    )
    return None if value is None else str(value)


async def release(conn: asyncpg.Connection, job_id: str) -> None:
    """The job's end is recorded: its key is free (at once, rather than at the next look)."""
    await conn.execute(
        "UPDATE job_concurrency SET state = 'done', changed_at = now()"
        " WHERE job_id = $1 AND state = 'running'",
        job_id,
    )


@contextlib.asynccontextmanager
async def watch_cancel(
    pool: asyncpg.Pool, job_id: str, on_cancel: Callable[[str], None], every: float
) -> AsyncIterator[None]:
    """While the block runs, look every ``every`` seconds whether a newer job of a
    ``cancel-running`` key asked this run to stop; call ``on_cancel(by)`` once if so."""

    async def watch() -> None:
        while True:
            await asyncio.sleep(every)
            try:
                async with pool.acquire() as conn:
                    by = await cancelled_by(conn, job_id)
            except Exception as exc:
                # Postgres away: the lease's own renewal copes with that; look again.
                log.debug("could not look for a cancellation", extra={"error": repr(exc)})
                continue
            if by is not None:
                on_cancel(by)
                return

    task = asyncio.create_task(watch())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
