"""A run's end and its lease's end are committed together: the statement that records a
job's succeeded, failed or interrupted event ends that attempt's lease, and nothing else."""

from __future__ import annotations

from typing import Any

import pytest

from hookbus_common import events as ev
from hookbus_common.service import Runtime
from hookbus_executor import leases, outcomes
from hookbus_executor.leases import Owner
from hookbus_executor.shell import ShellResult

from .test_executor import Replica, _request

pytestmark = pytest.mark.integration


async def _lease(rt: Runtime, job_id: str) -> tuple[Any, ...]:
    async with rt.pool.acquire() as conn:
        row = await conn.fetchrow(
            "SELECT attempt, outcome, ended_at IS NOT NULL FROM job_leases WHERE job_id = $1",
            job_id,
        )
    return tuple(row)


async def _take(rt: Runtime, req: ev.Event[ev.JobRequestedV2], owner: Owner) -> None:
    terminal = ev.derived_id(req.id, outcomes.TERMINAL_STEP)
    async with rt.pool.acquire() as conn:
        taken = await leases.take_fresh(conn, req, req.data.job_id, owner, 30.0,
                                        terminal_id=terminal)  # fmt: skip
    assert taken == leases.Acquired(1)


def _result(exit_code: int) -> ShellResult:
    return ShellResult(exit_code=exit_code, signal=None, timed_out=False, duration_ms=1.0,
                       output="", output_bytes=0, truncated=False)  # fmt: skip


async def test_a_job_run_to_its_end_leaves_its_lease_ended_with_its_outcome(rt: Runtime) -> None:
    ok = _request(["/bin/true"], job_id="job_ok")
    bad = _request(["/bin/false"], job_id="job_bad")
    await rt.outbox.commit([ok, bad])
    replica = Replica(rt)
    for req in (ok, bad):
        await replica.outcome(req)
    assert await _lease(rt, "job_ok") == (1, "succeeded", True)
    assert await _lease(rt, "job_bad") == (1, "failed", True)
    assert replica.runs.acted == {}


async def test_an_end_event_ends_only_the_lease_of_its_own_attempt(rt: Runtime) -> None:
    req = _request(["/bin/true"], job_id="job_a")
    await rt.outbox.commit([req])
    owner = Owner.here()
    await _take(rt, req, owner)
    async with rt.pool.acquire() as conn:
        # Since taken again as the job's second run.
        await conn.execute("UPDATE job_leases SET attempt = 2 WHERE job_id = 'job_a'")
    await rt.outbox.commit([outcomes.finished(req, 1, _result(1), None, retry_in=5.0)])
    assert await _lease(rt, "job_a") == (2, None, False)
    await rt.outbox.commit([outcomes.finished(req, 2, _result(0), None)])
    assert await _lease(rt, "job_a") == (2, "succeeded", True)


async def test_an_end_event_already_recorded_ends_no_lease(rt: Runtime) -> None:
    req = _request(["/bin/true"], job_id="job_k")
    done = outcomes.interrupted(req, 1, "executor_lost", retrying=False)
    await rt.outbox.commit([req, done])
    owner = Owner.here()
    async with rt.pool.acquire() as conn:
        claim = await leases.take(conn, req, "job_k", owner, 30.0, running_here=False,
                                  acted_here=None, terminal_id=done.id)  # fmt: skip
        # A lease row of this attempt that is open (as a takeover would leave it).
        await conn.execute("UPDATE job_leases SET ended_at = NULL, outcome = NULL")
    assert claim == leases.Finished()
    inserted, known = await rt.outbox.commit([done])
    assert (inserted, len(known)) == ([], 1)
    assert await _lease(rt, "job_k") == (1, None, False)


async def test_an_end_committed_in_a_transaction_ends_its_lease_too(rt: Runtime) -> None:
    req = _request(["/bin/true"], job_id="job_t1")
    await rt.outbox.commit([req])
    await _take(rt, req, Owner.here())
    # A request and another job's end in one batch take the transaction's way.
    other = _request(["/bin/true"], job_id="job_t2")
    await rt.outbox.commit([other, outcomes.finished(req, 1, _result(0), None)])
    assert await _lease(rt, "job_t1") == (1, "succeeded", True)


async def test_ends_of_several_jobs_in_one_batch_end_each_lease_and_status(rt: Runtime) -> None:
    reqs = [_request(["/bin/true"], job_id=f"job_g{i}") for i in range(3)]
    await rt.outbox.commit(reqs)
    for req in reqs:
        await _take(rt, req, Owner.here())
    ends = [outcomes.finished(r, 1, _result(i), None) for i, r in enumerate(reqs)]
    # One of a job's steps alone, and the others' together (as a grouped commit has them).
    await rt.outbox.commit(ends[:1])
    await rt.outbox.commit(ends[1:])
    assert [await _lease(rt, f"job_g{i}") for i in range(3)] == [
        (1, "succeeded", True), (1, "failed", True), (1, "failed", True),
    ]  # fmt: skip
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT job_id, status, exit_code FROM jobs WHERE job_id LIKE 'job_g%' ORDER BY job_id"
        )
    assert [tuple(r) for r in rows] == [
        ("job_g0", "succeeded", 0), ("job_g1", "failed", 1), ("job_g2", "failed", 2),
    ]  # fmt: skip
