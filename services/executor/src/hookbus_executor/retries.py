"""Retries after a failed run (an action's ``retries`` and ``backoff``): whether a failed
run is followed by another, and when.

The wait between attempts holds no consumer capacity: the message is given back to NATS
with the backoff as its delay (a nak, deferred: no failure, no retry budget spent), and a
message that comes back early (a restart, a redelivery) finds the wait in the job's lease
and is given back for what is left of it.
"""

from __future__ import annotations

import asyncpg

from hookbus_common import events as ev

# What a request without a backoff waits: as `backoff = { base = "1s", max = "1m" }`.
DEFAULT = ev.Backoff(base=1.0, max=60.0)


def again(req: ev.JobRequestedV2, attempt: int, *, ran: bool) -> bool:
    """Whether failed run ``attempt`` is followed by another. A run that could never
    start (a missing program, an unknown host) would fail the same way again: only runs
    that ran (or a docker operation that failed) are retried."""
    return ran and attempt <= req.retries


def delay(req: ev.JobRequestedV2, attempt: int) -> float:
    """The wait after failed run ``attempt``: base, doubled each attempt, at most max."""
    b = req.backoff or DEFAULT
    return float(min(b.max, b.base * 2 ** min(max(attempt - 1, 0), 32)))


async def wait_left(conn: asyncpg.Connection, req: ev.JobRequestedV2) -> float:
    """Seconds until the job's next attempt is due (0: now). The lease of a failed run
    ends with outcome ``failed``; its attempt and end say when the next one is due."""
    row = await conn.fetchrow(
        "SELECT attempt, extract(epoch FROM now() - ended_at) AS since FROM job_leases"
        " WHERE job_id = $1 AND outcome = 'failed' AND ended_at IS NOT NULL",
        req.job_id,
    )
    if row is None:
        return 0.0
    return max(0.0, delay(req, int(row["attempt"])) - float(row["since"]))
