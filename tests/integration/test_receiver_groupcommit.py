"""Group commit against a real Postgres: a row the event log cannot store is refused alone,
the rows it shared a batch with are committed, and a lost database fails the whole batch."""

from __future__ import annotations

import asyncio

import asyncpg
import msgspec
import pytest
from prometheus_client import REGISTRY

from hookbus_cli.embedded import free_port
from hookbus_common import events as ev
from hookbus_common.eventlog import Pending
from hookbus_common.outbox import Outbox
from hookbus_common.service import Runtime
from hookbus_receiver.groupcommit import GroupCommitter, Recorded
from hookbus_receiver.refusals import Unstorable

pytestmark = pytest.mark.integration


def pending(n: int, *, subject: str = "acme/app", sender: str = "octocat") -> Pending:
    data = ev.WebhookReceived(
        source="github",
        kind="github",
        event_type="push",
        delivery_id=f"d-{n}",
        payload=msgspec.Raw(b'{"n": %d}' % n),
        repository=subject,
        sender=sender,
    )
    event = ev.make_event(data, source="/hookbus/receiver/github", subject=subject)
    return Pending(event, f"github:d-{n}", b'{"n": %d}' % n)


async def logged_ids(rt: Runtime) -> set[str]:
    rows = await rt.pool.fetch("SELECT id FROM events WHERE type = $1", ev.WebhookReceived.TYPE)
    return {r["id"] for r in rows}


def isolated() -> float:
    return REGISTRY.get_sample_value("hookbus_receiver_commit_isolated_total") or 0.0


async def record_together(committer: GroupCommitter, batch: list[Pending]) -> list[object]:
    # Queued in one go, before the committer's task runs: they are flushed as one batch.
    return await asyncio.gather(*(committer.record(p) for p in batch), return_exceptions=True)


async def test_rows_postgres_cannot_store_are_refused_alone_and_the_rest_committed(
    rt: Runtime,
) -> None:
    committer = GroupCommitter(rt.outbox, batch_size=64, interval=0.05)
    committer.start()
    good = [pending(n) for n in range(40)]
    bad = {
        7: pending(1007, subject="acme/\x00app"),  # NUL in a text column
        23: pending(1023, sender="\ud800"),  # a lone surrogate: not UTF-8 at all
        31: pending(1031, subject="x\x00"),
    }
    batch = list(good)
    for at, p in sorted(bad.items()):
        batch.insert(at, p)
    before = isolated()
    try:
        results = await record_together(committer, batch)
    finally:
        await committer.close()

    outcome = dict(zip((p.event.id for p in batch), results, strict=True))
    for p in bad.values():
        assert isinstance(outcome[p.event.id], Unstorable), outcome[p.event.id]
    for p in good:
        result = outcome[p.event.id]
        assert isinstance(result, Recorded), result
        assert (result.event_id, result.duplicate) == (p.event.id, False)
    assert await logged_ids(rt) == {p.event.id for p in good}
    assert isolated() > before  # they did share a batch, which was split


async def test_a_batch_with_an_unstorable_row_still_answers_duplicates(rt: Runtime) -> None:
    committer = GroupCommitter(rt.outbox, batch_size=64, interval=0.05)
    committer.start()
    try:
        first = await committer.record(pending(1))
        again = pending(1)  # the same delivery id, a new event id
        results = await record_together(committer, [pending(2), again, pending(3, subject="\x00")])
    finally:
        await committer.close()

    assert isinstance(results[0], Recorded)
    assert results[0].duplicate is False
    assert isinstance(results[1], Recorded)
    assert (results[1].event_id, results[1].duplicate) == (first.event_id, True)
    assert isinstance(results[2], Unstorable)
    assert len(await logged_ids(rt)) == 2


async def test_a_database_that_cannot_be_reached_fails_the_whole_batch(rt: Runtime) -> None:
    # A real pool to a port nothing listens on: every acquire fails as a lost server would.
    dead = await asyncpg.create_pool(f"postgresql://nobody@127.0.0.1:{free_port()}/x", min_size=0)
    committer = GroupCommitter(Outbox(dead, rt.bus), batch_size=64, interval=0.05)
    committer.start()
    try:
        results = await record_together(committer, [pending(1), pending(2, subject="\x00")])
    finally:
        await committer.close()
        await dead.close()

    assert all(isinstance(r, OSError) for r in results), results  # answered 503, not 4xx
    assert await logged_ids(rt) == set()


async def test_a_kept_connection_the_server_ended_is_replaced(rt: Runtime) -> None:
    # The tests' pool holds 5: room for a kept connection beside 2 flushes and the relay.
    committer = GroupCommitter(rt.outbox, batch_size=64, interval=0.05, max_flushes=2)
    committer.start()
    try:
        first = await committer.record(pending(1))
        # Kept for the next flush rather than given back to the pool.
        kept = committer._conn.kept
        assert kept is not None
        await rt.pool.execute("SELECT pg_terminate_backend($1)", kept.get_server_pid())
        await asyncio.sleep(0.5)  # the client learns that the server ended it
        second = await committer.record(pending(2))
    finally:
        await committer.close()
    assert isinstance(first, Recorded)
    assert isinstance(second, Recorded)
    assert await logged_ids(rt) == {first.event_id, second.event_id}
    assert committer._conn.kept is None  # closed: given back to the pool


async def test_no_connection_is_kept_when_the_pool_has_no_room_for_it(rt: Runtime) -> None:
    committer = GroupCommitter(rt.outbox, batch_size=64, interval=0.05, max_flushes=4)
    committer.start()
    try:
        assert isinstance(await committer.record(pending(1)), Recorded)
        assert committer._conn.kept is None
    finally:
        await committer.close()
