"""The executor through the real consume loop (NATS and Postgres): a job held by another run
is deferred (its message holds no place in flight and is never dead-lettered), deferrals
are not attempts, and a stop waits for running jobs longer than the ack wait."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY

from hookbus_common import events as ev
from hookbus_common.bus import MSG_ID
from hookbus_common.consumer import Ack, Consumer, Defer, Incoming, Yielded
from hookbus_common.service import Runtime
from hookbus_executor.config import drain_timeout
from hookbus_executor.jobs import TERMINAL_STEP

from .test_executor import Replica, _job, _lease, _request, _waits_for

pytestmark = pytest.mark.integration


async def _until(check: Callable[[], Any], what: str, within: float = 30.0) -> None:
    """Poll ``check`` (plain or awaitable) until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


def _handled(durable: str, outcome: str) -> float:
    labels = {"consumer": durable, "outcome": outcome}
    return REGISTRY.get_sample_value("hookbus_messages_handled_total", labels) or 0.0


async def _count(rt: Runtime, type_: str) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", type_))


async def _attempts(rt: Runtime, type_: str, job_id: str) -> list[int]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT (data->>'attempt')::int AS a FROM events WHERE type = $1"
            " AND data->>'job_id' = $2 ORDER BY seq",
            type_,
            job_id,
        )
    return [r["a"] for r in rows]


class Consuming:
    """One executor replica's consume loop on the test's stream: its own runs (owner) and
    handler, the shared durable, as a deployed executor runs it."""

    def __init__(self, rt: Runtime, *, max_in_flight: int = 1, max_deliver: int = 2,
                 **executor: Any) -> None:  # fmt: skip
        self.replica = Replica(rt, **executor)
        e = self.replica.settings.executor
        self.durable = f"{rt.bus.prefix}-executor"
        self.consumer = Consumer(
            service="executor", bus=rt.bus, outbox=rt.outbox, durable=self.durable,
            filter_subjects=[f"{rt.bus.prefix}.job.requested.>"],
            handler=self.replica.handler, max_in_flight=max_in_flight,
            max_deliver=max_deliver, ack_wait=e.ack_wait_seconds,
            terminal_step=TERMINAL_STEP, drain_timeout=drain_timeout(e),
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    @property
    def stop(self) -> asyncio.Event:
        # One event, as in the executor: the consume loop's stop is the runs' stopping.
        return self.replica.stopping

    async def __aenter__(self) -> Consuming:
        await self.replica.runs.start()
        self.task = asyncio.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        try:
            await asyncio.wait_for(self.task, 60)
        finally:
            await self.replica.runs.close()


async def _publish_copy(rt: Runtime, req: ev.Event[Any], copy_id: str) -> None:
    """The same request once more as a new stream message (as a republish after the
    dedupe window, or a replayed stream, delivers it)."""
    await rt.bus.js.publish(
        req.bus_subject(rt.bus.prefix), ev.encode(req), headers={MSG_ID: copy_id}
    )


async def test_a_duplicate_of_a_running_job_is_deferred_holding_no_place_and_never_dead_lettered(
    rt: Runtime, tmp_path: Path
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    first = _request(_waits_for(marker, release), job_id="job_long")
    other_marker = tmp_path / "other"
    other = _request(["/bin/sh", "-c", f"echo other >> {other_marker}"], job_id="job_other")

    async with Consuming(rt) as one:
        await rt.outbox.commit_and_publish([first])
        await _until(marker.exists, "the long job to start on the first replica")
        # The first replica's one place is taken by the long job. A second replica, one
        # place too, gets the job's message again while it runs, then another job.
        async with Consuming(rt) as two:
            await _publish_copy(rt, first, "copy-of-job_long")
            await _until(lambda: _handled(two.durable, "defer") >= 1, "the duplicate deferred")
            await rt.outbox.commit_and_publish([other])
            # The other job runs while the long one still runs: the deferred duplicate
            # does not hold the second replica's only place.
            await _until(lambda: _job_status(rt, "job_other", "succeeded"), "the other job")
            assert other_marker.read_text() == "other\n"
            assert marker.read_text() == "run 1\n"
            assert not (await _lease(rt, "job_long"))["ended_at"]
            # Deferred again and again, well past max_deliver (2): never dead-lettered.
            await _until(lambda: _handled(two.durable, "defer") >= 5, "five deferrals")
            assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
            assert _handled(two.durable, "term") == 0
            assert marker.read_text() == "run 1\n"  # never run beside the first run

            release.touch()
            await _until(lambda: _job_status(rt, "job_long", "succeeded"), "the long job")

            async def settled() -> bool:
                info = await rt.bus.js.consumer_info(rt.bus.stream, one.durable)
                return info.num_ack_pending == 0 and info.num_pending == 0

            # The duplicate comes back once more, finds the job finished, and is acked.
            await _until(settled, "every message acked")

    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
    assert marker.read_text() == "run 1\n"
    assert await _attempts(rt, ev.JobStarted.TYPE, "job_long") == [1]
    assert await _job(rt, "job_long") == ("succeeded", 1)


async def _job_status(rt: Runtime, job_id: str, status: str) -> bool:
    async with rt.pool.acquire() as conn:
        got = await conn.fetchval("SELECT status FROM jobs WHERE job_id = $1", job_id)
    return bool(got == status)


async def test_deferrals_are_not_attempts_the_first_real_run_is_attempt_1(
    rt: Runtime, tmp_path: Path
) -> None:
    marker = tmp_path / "runs"
    req = _request(["/bin/sh", "-c", f'echo "run $HOOKBUS_JOB_ATTEMPT" >> {marker}'])
    await rt.outbox.commit([req])

    # A stopping executor defers the job before taking its lease, twice.
    stopping = Replica(rt)
    stopping.stopping.set()
    for deliveries in (1, 2):
        outcome, out = await stopping.outcome(req, deliveries=deliveries)
        assert isinstance(outcome, Defer)
        assert out == []

    # An executor stopped just after recording job.started (before the action started)
    # defers it too, twice: the run never acted, so it gives its attempt back.
    for deliveries in (3, 4):
        late = Replica(rt)
        handler = late.handler

        async def stop_after_started(
            incoming: Incoming, late: Replica = late, handler: Any = handler
        ) -> AsyncIterator[Yielded]:
            async for item in handler(incoming):
                yield item
                # Committed (the handler sees the stop when it goes on).
                committed = [item] if isinstance(item, ev.Event) else item
                if any(isinstance(e.data, ev.JobStarted) for e in committed):
                    late.stopping.set()

        late.handler = stop_after_started
        outcome, out = await late.outcome(req, deliveries=deliveries)
        assert isinstance(outcome, Defer), outcome
        assert [(type(e.data), e.data.attempt) for e in out] == [(ev.JobStarted, 1)]
        assert (await _lease(rt))["outcome"] == "not_started"
    assert not marker.exists()

    # The first real run, on the fifth delivery, is attempt 1.
    outcome, out = await Replica(rt).outcome(req, deliveries=5)
    assert outcome == Ack()
    assert [(type(e.data), e.data.attempt) for e in out] == [
        (ev.JobStarted, 1), (ev.JobSucceeded, 1),
    ]  # fmt: skip
    assert marker.read_text() == "run 1\n"
    assert await _job(rt) == ("succeeded", 1)
    assert (await _lease(rt))["attempt"] == 1


@pytest.mark.parametrize("ends", ["by-itself", "after-its-grace"])
async def test_a_stop_waits_for_a_running_job_longer_than_the_ack_wait_and_records_it(
    rt: Runtime, tmp_path: Path, ends: str
) -> None:
    marker, release = tmp_path / "runs", tmp_path / "release"
    req = _request(_waits_for(marker, release))
    ack_wait = 3.0
    grace = 20.0 if ends == "by-itself" else 2 * ack_wait
    running = Consuming(
        rt, ack_wait_seconds=ack_wait, shutdown_grace_seconds=grace, kill_grace_seconds=0.5
    )
    assert running.consumer.drain_timeout > grace > ack_wait
    async with running:
        await rt.outbox.commit_and_publish([req])
        await _until(marker.exists, "the job to start")
        running.stop.set()  # SIGTERM
        # Past the ack wait (twice over), the stopping consume loop still waits for the job.
        stopped_at = time.monotonic()
        await _until(lambda: time.monotonic() - stopped_at > 2 * ack_wait - 0.5, "a while")
        assert running.task is not None
        if ends == "by-itself":
            assert not running.task.done()
            release.touch()
        await asyncio.wait_for(asyncio.shield(running.task), 60)

    types = [t async for t in _types(rt, req)]
    if ends == "by-itself":
        assert types == [ev.JobStarted.TYPE, ev.JobSucceeded.TYPE]
        assert await _job(rt) == ("succeeded", 1)
    else:
        assert types == [ev.JobStarted.TYPE, ev.JobInterrupted.TYPE]
        assert await _job(rt) == ("interrupted", 1)
    assert marker.read_text() == "run 1\n"

    # Settled before the loop stopped: acked, not left for redelivery.
    async def acked() -> bool:
        info = await rt.bus.js.consumer_info(rt.bus.stream, running.durable)
        assert info.delivered.consumer_seq == 1  # delivered once: its progress kept it
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await _until(acked, "the message acked")


async def _types(rt: Runtime, req: ev.Event[Any]) -> AsyncIterator[str]:
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch(
            "SELECT type FROM events WHERE causation_id = $1 ORDER BY seq", req.id
        )
    for r in rows:
        yield r["type"]
