"""The bus and the consume loop against a real nats-server and Postgres (and, for outages,
a Postgres of the test's own that it stops and starts again)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.consumer import Consumer, Gated, Incoming, Yielded
from hookbus_common.errors import Deferred, PermanentError, RetryableError
from hookbus_common.eventlog import Appended
from hookbus_common.outbox import Outbox
from hookbus_common.service import Runtime
from hookbus_common.settings import Settings

from .ownpostgres import OwnPostgres, runtime_on, serving, waiting_for_recovery

pytestmark = pytest.mark.integration


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    """Poll ``check`` until it holds; fail after ``timeout`` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


def _job(n: int = 0) -> ev.Event[ev.JobRequested]:
    return ev.make_event(
        ev.JobRequested(job_id=f"job_{n}", kind="shell", rule="r", webhook_id="w"),
        source="/test",
    )


async def _count(rt: Runtime, type_: str) -> int:
    async with rt.pool.acquire() as conn:
        return int(await conn.fetchval("SELECT count(*) FROM events WHERE type = $1", type_))


class Running:
    def __init__(self, rt: Runtime, handler: Any, **kw: Any) -> None:
        self.stop = asyncio.Event()
        self.consumer = Consumer(
            service="test", bus=rt.bus, outbox=kw.pop("outbox", rt.outbox), durable=f"{rt.bus.prefix}-test",
            filter_subjects=kw.pop("filter_subjects", [f"{rt.bus.prefix}.job.requested.>"]),
            handler=handler,
            max_in_flight=kw.pop("max_in_flight", 4), max_deliver=kw.pop("max_deliver", 5), **kw,
        )  # fmt: skip
        self.task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Running:
        self.task = asyncio.create_task(self.consumer.run(self.stop))
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        assert self.task is not None
        await asyncio.wait_for(self.task, 20)


def _started(incoming: Incoming) -> ev.Event[Any]:
    req = incoming.event.data
    return ev.make_event(
        ev.JobStarted(job_id=req.job_id, kind="shell", rule="r"),
        source="/test", id=ev.derived_id(incoming.event.id, "started"), cause=incoming.event,
    )  # fmt: skip


async def test_handled_message_commits_its_events_and_is_acked(rt: Runtime) -> None:
    seen: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append(incoming.event.id)
        yield _started(incoming)

    job = _job()
    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([job])
        await until(lambda: _started_count(rt))
    assert seen == [job.id]
    info = await rt.bus.js.consumer_info(rt.bus.stream, f"{rt.bus.prefix}-test")
    assert info.num_ack_pending == 0
    assert info.num_pending == 0


async def _started_count(rt: Runtime) -> bool:
    return await _count(rt, ev.JobStarted.TYPE) == 1


async def test_retryable_failure_is_redelivered_and_then_succeeds(rt: Runtime) -> None:
    attempts: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        attempts.append(incoming.deliveries)
        if incoming.deliveries < 3:
            raise RetryableError("downstream away", delay=0.05)
        yield _started(incoming)

    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _started_count(rt))
    assert attempts == [1, 2, 3]


async def test_permanent_failure_is_terminated_and_dead_lettered(rt: Runtime) -> None:
    calls = 0

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        nonlocal calls
        calls += 1
        raise PermanentError("cannot ever work")
        yield  # pragma: no cover

    job = _job()
    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([job])

        async def dead() -> bool:
            return await _count(rt, ev.MessageDeadLettered.TYPE) == 1

        await until(dead)
    assert calls == 1
    async with rt.pool.acquire() as conn:
        chain = await eventlog.chain(conn, job.id)
    assert [c.event.type for c in chain] == [ev.JobRequested.TYPE, ev.MessageDeadLettered.TYPE]
    assert b"cannot ever work" in bytes(chain[1].event.data)


async def test_a_message_failing_every_time_is_dead_lettered_after_max_deliver(rt: Runtime) -> None:
    attempts: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        attempts.append(incoming.deliveries)
        raise RetryableError("still down", delay=0.01)
        yield  # pragma: no cover

    async with Running(rt, handler, max_deliver=3):
        await rt.outbox.commit_and_publish([_job()])

        async def dead() -> bool:
            return await _count(rt, ev.MessageDeadLettered.TYPE) == 1

        await until(dead)
    assert attempts == [1, 2, 3]


async def test_undecodable_message_is_dead_lettered_not_dropped(rt: Runtime) -> None:
    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        raise AssertionError("must not be called")
        yield  # pragma: no cover

    async with Running(rt, handler):
        await rt.bus.publish(f"{rt.bus.prefix}.job.requested.shell", "junk-1", b"{not json")

        async def dead() -> bool:
            return await _count(rt, ev.MessageDeadLettered.TYPE) == 1

        await until(dead)
    async with rt.pool.acquire() as conn:
        data = await conn.fetchval("SELECT data::text FROM events WHERE type = $1",
                                   ev.MessageDeadLettered.TYPE)  # fmt: skip
    assert "{not json" in data
    assert "undecodable" in data


async def test_in_flight_messages_are_bounded(rt: Runtime) -> None:
    active = 0
    peak = 0

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.05)
        active -= 1
        yield _started(incoming)

    async with Running(rt, handler, max_in_flight=3):
        await rt.outbox.commit_and_publish([_job(i) for i in range(12)])

        async def all_done() -> bool:
            return await _count(rt, ev.JobStarted.TYPE) == 12

        await until(all_done)
    assert peak == 3


async def test_publish_sets_msg_id_so_republishing_is_deduplicated(rt: Runtime) -> None:
    job = _job()
    await rt.outbox.commit_and_publish([job])
    await rt.outbox.commit_and_publish([job])  # a redelivered handler commits it again
    info = await rt.bus.js.stream_info(rt.bus.stream)
    assert info.state.messages == 1
    msg = await rt.bus.js.get_last_msg(rt.bus.stream, f"{rt.bus.prefix}.job.requested.shell")
    assert msg.headers is not None
    assert msg.headers["Nats-Msg-Id"] == job.id


async def _settled(rt: Runtime, durable: str, messages: int) -> bool:
    """Whether the durable has had ``messages`` messages and has none pending or unacked."""
    info = await rt.bus.js.consumer_info(rt.bus.stream, durable)
    done = info.num_pending == 0 and info.num_ack_pending == 0
    return done and info.delivered.consumer_seq >= messages


async def test_a_message_whose_terminal_step_is_recorded_is_acked_unhandled(rt: Runtime) -> None:
    seen: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append(incoming.event.id)
        yield _started(incoming)

    finished, fresh = _job(1), _job(2)
    # The first job's work ended before a crash that left its message unacked.
    done = ev.make_event(
        ev.JobSucceeded(job_id="job_1", kind="shell", rule="r"),
        source="/test", id=ev.derived_id(finished.id, "finished"), cause=finished,
    )  # fmt: skip
    await rt.outbox.commit([finished, done])
    async with Running(rt, handler, terminal_step="finished"):
        await rt.outbox.commit_and_publish([finished, fresh])
        await until(lambda: _settled(rt, f"{rt.bus.prefix}-test", 2))
    assert seen == [fresh.id]
    assert await _count(rt, ev.JobStarted.TYPE) == 1


async def test_without_a_terminal_step_every_message_is_handled(rt: Runtime) -> None:
    seen: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append(incoming.event.id)
        yield _started(incoming)

    job = _job(1)
    done = ev.make_event(
        ev.JobSucceeded(job_id="job_1", kind="shell", rule="r"),
        source="/test", id=ev.derived_id(job.id, "finished"), cause=job,
    )  # fmt: skip
    await rt.outbox.commit([job, done])
    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([job])
        await until(lambda: _started_count(rt))
    assert seen == [job.id]


async def test_a_durable_with_one_filter_is_widened_to_several_in_place(rt: Runtime) -> None:
    # A durable made by an older release with one filter subject is updated, not refused,
    # and keeps what it had acked.
    prefix, durable = rt.bus.prefix, f"{rt.bus.prefix}-test"
    seen: list[str] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append(incoming.subject)
        return
        yield  # pragma: no cover

    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([_job(1)])
        await until(lambda: _settled(rt, durable, 1))
    before = await rt.bus.js.consumer_info(rt.bus.stream, durable)
    assert before.config.filter_subject == f"{prefix}.job.requested.>"

    wider = [f"{prefix}.job.requested.>", f"{prefix}.job.started.>"]
    started = ev.make_event(ev.JobStarted(job_id="job_2", kind="shell", rule="r"), source="/t")
    async with Running(rt, handler, filter_subjects=wider):
        await rt.outbox.commit_and_publish([_job(2), started])
        await until(lambda: _settled(rt, durable, 3))
    after = await rt.bus.js.consumer_info(rt.bus.stream, durable)
    assert sorted(after.config.filter_subjects or []) == sorted(wider)
    # The first message is not delivered again; both subjects are now taken.
    assert seen[0] == f"{prefix}.job.requested.shell"
    assert sorted(seen[1:]) == [f"{prefix}.job.requested.shell", f"{prefix}.job.started.shell"]


# ------------------------------------------------------------------ Postgres away


@pytest.fixture(scope="module")
def own_pg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OwnPostgres]:
    yield from serving(tmp_path_factory.mktemp("own-pg") / "pg")


@pytest.fixture
async def own_rt(own_pg: OwnPostgres, settings: Settings) -> AsyncIterator[Runtime]:
    """This test's runtime, its pool on a Postgres the test may stop."""
    async with runtime_on(own_pg, settings) as rt:
        yield rt


async def _waiting(durable: str) -> bool:
    return waiting_for_recovery(durable) >= 1


def _finished(incoming: Incoming) -> ev.Event[Any]:
    req = incoming.event.data
    return ev.make_event(
        ev.JobSucceeded(job_id=req.job_id, kind="shell", rule="r"),
        source="/test", id=ev.derived_id(incoming.event.id, "finished"), cause=incoming.event,
    )  # fmt: skip


async def test_an_outcome_that_cannot_be_committed_is_kept_until_postgres_is_back(
    own_rt: Runtime, own_pg: OwnPostgres, tmp_path: Path
) -> None:
    # The work is done (its side effect a line in a file) and Postgres stops before its
    # outcome is recorded: the loop holds the outcome and the message until Postgres is
    # back, then records it. The work is not done again and nothing is dead-lettered.
    rt = own_rt
    durable = f"{rt.bus.prefix}-test"
    effects = tmp_path / "effects"
    ack_wait = 2.0
    done, go = asyncio.Event(), asyncio.Event()
    seen: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append(incoming.deliveries)
        with effects.open("a") as f:
            f.write(incoming.event.id + "\n")
        done.set()
        while not go.is_set():  # a long handler keeps its message, as the contract asks
            await incoming.progress()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(go.wait(), ack_wait / 4)
        yield _finished(incoming)

    job = _job()
    async with Running(
        rt, handler, terminal_step="finished", max_deliver=2, ack_wait=ack_wait
    ) as running:
        await rt.outbox.commit_and_publish([job])
        await asyncio.wait_for(done.wait(), 20)
        await own_pg.stop()
        go.set()
        await until(lambda: _waiting(durable))
        # Longer than the ack wait: only the loop's in-progress reports keep the message.
        await asyncio.sleep(3 * ack_wait)
        assert running.task is not None
        assert not running.task.done()
        await own_pg.start()

        async def recorded() -> bool:
            return await _count(rt, ev.JobSucceeded.TYPE) == 1

        await until(recorded, timeout=30)
        await until(lambda: _settled(rt, durable, 1))
    assert effects.read_text().split() == [job.id]
    assert seen == [1]
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
    info = await rt.bus.js.consumer_info(rt.bus.stream, durable)
    assert info.delivered.consumer_seq <= 2  # delivered once; at most one redelivery
    assert waiting_for_recovery(durable) == 0


async def test_messages_arriving_while_postgres_is_stopped_wait_and_none_is_dead_lettered(
    own_rt: Runtime, own_pg: OwnPostgres
) -> None:
    # With max_deliver 3, a nak per failed read would dead-letter these within seconds.
    # Each handler reads Postgres before its side effect; the reads fail while Postgres is
    # away, and the loop waits for it instead of giving the messages back.
    rt = own_rt
    durable = f"{rt.bus.prefix}-test"
    effects: Counter[str] = Counter()
    deliveries: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        deliveries.append(incoming.deliveries)
        async with rt.pool.acquire() as conn:
            await conn.fetchval("SELECT count(*) FROM jobs")
        effects[incoming.event.id] += 1
        yield _started(incoming)

    jobs = [_job(i) for i in range(20)]
    async with Running(rt, handler, max_deliver=3, max_in_flight=4):
        await own_pg.stop()
        for job in jobs:  # Postgres is away, so straight onto the bus
            await rt.bus.publish(job.bus_subject(rt.bus.prefix), job.id, msgspec.json.encode(job))
        await until(lambda: _waiting(durable))
        await asyncio.sleep(4.0)  # Postgres stays away for several seconds
        assert not effects
        await own_pg.start()

        async def all_started() -> bool:
            return await _count(rt, ev.JobStarted.TYPE) == len(jobs)

        await until(all_started, timeout=30)
        await until(lambda: _settled(rt, durable, len(jobs)))
    assert effects == Counter({job.id: 1 for job in jobs})
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
    # No message was delivered again: the outage did not count toward max_deliver.
    assert set(deliveries) == {1}
    info = await rt.bus.js.consumer_info(rt.bus.stream, durable)
    assert info.delivered.consumer_seq == len(jobs)
    assert waiting_for_recovery(durable) == 0


async def test_a_stop_while_waiting_for_postgres_gives_the_message_back_undead(
    own_rt: Runtime, own_pg: OwnPostgres
) -> None:
    # Stopping while Postgres is away: the message is naked (not terminated), at once
    # rather than after the ack wait, and the next consumer handles it.
    rt = own_rt
    durable = f"{rt.bus.prefix}-test"
    deliveries: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        deliveries.append(incoming.deliveries)
        yield _started(incoming)

    job = _job()
    await rt.outbox.commit_and_publish([job])
    await own_pg.stop()
    # An ack wait longer than Running's exit allows: only a prompt nak lets it exit.
    async with Running(rt, handler, terminal_step="finished", max_deliver=1, ack_wait=60.0):
        await until(lambda: _waiting(durable))
    assert deliveries == []
    assert waiting_for_recovery(durable) == 0
    await own_pg.start()
    async with Running(rt, handler, terminal_step="finished", max_deliver=2):
        await until(lambda: _started_count(rt))
        await until(lambda: _settled(rt, durable, 2))
    # Handled once, on a later delivery (naked once, or more if a fetch was under way as
    # the first consumer stopped), and never terminated although max_deliver was 1.
    assert len(deliveries) == 1
    assert deliveries[0] >= 2
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0


async def test_a_dropped_connection_that_is_back_at_once_runs_the_handler_again_in_place(
    rt: Runtime,
) -> None:
    # Postgres and NATS answer when the loop looks: the handler runs again at once, in
    # the same delivery, rather than being naked.
    calls: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        calls.append(incoming.deliveries)
        if len(calls) == 1:
            raise ConnectionResetError(104, "Connection reset by peer")
        yield _started(incoming)

    async with Running(rt, handler, max_deliver=1):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _started_count(rt))
        await until(lambda: _settled(rt, f"{rt.bus.prefix}-test", 1))
    assert calls == [1, 1]
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0


async def test_an_outage_error_is_never_dead_lettered_past_max_deliver(rt: Runtime) -> None:
    # Failing for an outage twice in a row while the parts answer is given back (naked),
    # but however often that happens, an outage does not make the message dead.
    calls: list[int] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        calls.append(incoming.deliveries)
        if len(calls) <= 4:
            raise TimeoutError("pool acquire timed out")
        yield _started(incoming)

    async with Running(rt, handler, max_deliver=2):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _started_count(rt), timeout=20)
        await until(lambda: _settled(rt, f"{rt.bus.prefix}-test", 1))
    assert calls == [1, 1, 2, 2, 3]
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0


async def test_a_deferred_message_holds_no_place_and_is_never_dead_lettered(rt: Runtime) -> None:
    """With one place in flight and max_deliver 1, a message deferred again and again lets
    another through meanwhile, is never terminated, and its first real failure is try 1."""
    held, other = _job(1), _job(2)
    release = asyncio.Event()
    seen: list[tuple[str, int, int]] = []

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        seen.append((incoming.event.data.job_id, incoming.deliveries, incoming.tries))
        if incoming.event.id == held.id and not release.is_set():
            raise Deferred(0.05, "held elsewhere")
        if incoming.event.id == held.id and incoming.tries == 1:
            raise RetryableError("its own failure, once", delay=0.05)
        yield _started(incoming)

    async with Running(rt, handler, max_in_flight=1, max_deliver=2, terminal_step="started"):
        await rt.outbox.commit_and_publish([held])
        await until(lambda: _async(sum(1 for s in seen if s[0] == "job_1") >= 3))
        await rt.outbox.commit_and_publish([other])
        # The other message is handled while the first keeps being deferred.
        await until(lambda: _async(("job_2", 1, 1) in seen))
        await until(lambda: _async(sum(1 for s in seen if s[0] == "job_1") >= 8))
        assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
        release.set()
        await until(lambda: _count_is(rt, ev.JobStarted.TYPE, 2))
    assert await _count(rt, ev.MessageDeadLettered.TYPE) == 0
    tail = [s for s in seen if s[0] == "job_1"][-2:]
    # Past max_deliver by JetStream's count, yet its one failure was try 1, and the
    # delivery after it try 2 (max_deliver 2): it was not given up.
    assert tail[0][1] > 2
    assert [t[2] for t in tail] == [1, 2]


async def _async(value: bool) -> bool:
    return value


async def _count_is(rt: Runtime, type_: str, n: int) -> bool:
    return await _count(rt, type_) == n


async def test_a_stop_waits_up_to_the_drain_timeout_past_the_ack_wait(rt: Runtime) -> None:
    """Work in hand at a stop gets ``drain_timeout``, however short the ack wait, and is
    acked when it finishes (it reports progress, so it is not redelivered meanwhile)."""
    ack_wait = 1.0
    running_now = asyncio.Event()
    finished = asyncio.Event()

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        running_now.set()
        loop = asyncio.get_running_loop()
        ends = loop.time() + 3 * ack_wait
        while loop.time() < ends:
            await incoming.progress()
            await asyncio.sleep(ack_wait / 4)
        finished.set()
        yield _started(incoming)

    run = Running(rt, handler, ack_wait=ack_wait, drain_timeout=30.0, terminal_step="started")
    async with run:
        await rt.outbox.commit_and_publish([_job()])
        await asyncio.wait_for(running_now.wait(), 10)
        run.stop.set()
        assert run.task is not None
        await asyncio.wait_for(asyncio.shield(run.task), 30)
    assert finished.is_set()
    assert await _count(rt, ev.JobStarted.TYPE) == 1

    async def acked() -> bool:
        info = await rt.bus.js.consumer_info(rt.bus.stream, f"{rt.bus.prefix}-test")
        assert info.delivered.consumer_seq == 1  # delivered once: its progress kept it
        return (info.num_ack_pending, info.num_pending) == (0, 0)

    await until(acked)


async def test_a_copy_sent_again_while_the_message_is_in_hand_is_not_handled_twice(
    rt: Runtime,
) -> None:
    # The handler outlasts the ack wait without reporting progress (as when NATS was away
    # and progress could not reach it): JetStream sends the message again while it is still
    # in hand. The copy is not handled a second time, and is acked with the original.
    calls: list[int] = []
    release = asyncio.Event()

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        calls.append(incoming.deliveries)
        await release.wait()
        yield _started(incoming)

    job = _job()
    async with Running(rt, handler, ack_wait=1.0) as running:
        await rt.outbox.commit_and_publish([job])

        async def copied() -> bool:
            info = await rt.bus.js.consumer_info(rt.bus.stream, running.consumer.durable)
            return (info.num_redelivered or 0) >= 1

        await until(copied, timeout=20)
        await asyncio.sleep(0.2)  # the copy reaches the loop
        release.set()
        await until(lambda: _started_count(rt))

        async def settled() -> bool:
            info = await rt.bus.js.consumer_info(rt.bus.stream, running.consumer.durable)
            return info.num_ack_pending == 0

        await until(settled, timeout=20)
    assert calls == [1]


async def test_a_gated_step_is_committed_only_with_its_gate_and_the_handler_learns_which(
    rt: Runtime,
) -> None:
    told: dict[str, bool] = {}

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        job_id = incoming.event.data.job_id
        # The gate of job_0 returns a row, job_1's none.
        gate = eventlog.Gate("SELECT 1 WHERE {}::bool", (job_id == "job_0",))
        step = Gated([_started(incoming)], gate)
        yield step
        told[job_id] = step.inserted

    async with Running(rt, handler):
        await rt.outbox.commit_and_publish([_job(0), _job(1)])
        await until(lambda: _all_told(told))
    assert told == {"job_0": True, "job_1": False}
    async with rt.pool.acquire() as conn:
        rows = await conn.fetch("SELECT data->>'job_id' AS job FROM events WHERE type = $1",
                                ev.JobStarted.TYPE)  # fmt: skip
    assert [r["job"] for r in rows] == ["job_0"]
    info = await rt.bus.js.consumer_info(rt.bus.stream, f"{rt.bus.prefix}-test")
    assert (info.num_ack_pending, info.num_pending) == (0, 0)


async def _all_told(told: dict[str, bool]) -> bool:
    return len(told) == 2


class _Batches(Outbox):
    """The test's runtime outbox, noting each batch its consume loop publishes."""

    def __init__(self, rt: Runtime) -> None:
        super().__init__(rt.pool, rt.bus)
        self.batches: list[list[str]] = []

    def publish_later(self, appended: Sequence[Appended]) -> None:
        if appended:
            self.batches.append([a.event.type for a in appended])
        super().publish_later(appended)


def _succeeded(incoming: Incoming) -> ev.Event[Any]:
    req = incoming.event.data
    return ev.make_event(
        ev.JobSucceeded(job_id=req.job_id, kind="shell", rule="r", exit_code=0, duration_ms=1.0),
        source="/test", id=ev.derived_id(incoming.event.id, "succeeded"), cause=incoming.event,
    )  # fmt: skip


async def _on_the_bus(rt: Runtime) -> tuple[list[str], Callable[[], Awaitable[None]]]:
    """The types of the job events published from now on, in the order the bus has them."""
    seen: list[str] = []

    async def note(msg: Any) -> None:
        seen.append(ev.decode(msg.data).type)

    sub = await rt.bus.nc.subscribe(f"{rt.bus.prefix}.job.*.>", cb=note)
    return seen, sub.unsubscribe


async def test_a_commit_the_work_follows_quickly_is_published_with_it_in_one_batch(
    rt: Runtime,
) -> None:
    outbox = _Batches(rt)

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        yield Gated([_started(incoming)], eventlog.Gate("SELECT 1", ()))
        yield _succeeded(incoming)

    seen, unsubscribe = await _on_the_bus(rt)
    # A hold far longer than the work: what goes together cannot depend on timing.
    async with Running(rt, handler, outbox=outbox, publish_hold=60.0):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _seen(seen, 3))
    await unsubscribe()
    assert outbox.batches == [[ev.JobStarted.TYPE, ev.JobSucceeded.TYPE]]
    assert seen == [ev.JobRequested.TYPE, ev.JobStarted.TYPE, ev.JobSucceeded.TYPE]


async def test_a_commit_waits_for_the_work_no_longer_than_the_hold(rt: Runtime) -> None:
    outbox = _Batches(rt)
    release = asyncio.Event()

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        yield _started(incoming)
        # Work that goes on until the test has seen the start on the bus: only the hold's
        # end publishes it (no later commit, no end of the handler comes first).
        await release.wait()
        yield _succeeded(incoming)

    seen, unsubscribe = await _on_the_bus(rt)
    async with Running(rt, handler, outbox=outbox, publish_hold=0.05):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _seen(seen, 2))
        assert seen == [ev.JobRequested.TYPE, ev.JobStarted.TYPE]
        release.set()
        await until(lambda: _seen(seen, 3))
    await unsubscribe()
    assert outbox.batches == [[ev.JobStarted.TYPE], [ev.JobSucceeded.TYPE]]


async def test_without_a_hold_each_commit_is_published_at_once(rt: Runtime) -> None:
    outbox = _Batches(rt)

    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        yield _started(incoming)
        yield _succeeded(incoming)

    async with Running(rt, handler, outbox=outbox, publish_hold=0):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _batches(outbox, 2))
    assert outbox.batches == [[ev.JobStarted.TYPE], [ev.JobSucceeded.TYPE]]


async def test_what_a_failing_handler_committed_is_published_when_it_fails(rt: Runtime) -> None:
    async def handler(incoming: Incoming) -> AsyncIterator[Yielded]:
        yield _started(incoming)
        raise PermanentError("broke after its start was recorded")

    outbox = _Batches(rt)
    seen, unsubscribe = await _on_the_bus(rt)
    # The hold outlasts the test: only the handler's end publishes the start from the
    # consume loop (the runtime's relay would, too, but later and not through it).
    async with Running(rt, handler, outbox=outbox, publish_hold=60.0):
        await rt.outbox.commit_and_publish([_job()])
        await until(lambda: _seen(seen, 2))
    await unsubscribe()
    assert seen[:2] == [ev.JobRequested.TYPE, ev.JobStarted.TYPE]
    # Then the message's dead letter, recorded after the handler ended.
    assert outbox.batches[0] == [ev.JobStarted.TYPE]


async def _seen(seen: list[str], n: int) -> bool:
    return len(seen) >= n


async def _batches(outbox: _Batches, n: int) -> bool:
    return len(outbox.batches) >= n
