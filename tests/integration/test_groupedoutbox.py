"""Group commit on real Postgres: deliveries committed together in one transaction leave
the log and the deliveries read model exactly as one transaction each would."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from hookbus_common import eventlog
from hookbus_common import events as ev
from hookbus_common.groupedoutbox import GroupedOutbox
from hookbus_common.outbox import Outbox
from hookbus_common.service import Runtime
from hookbus_dispatcher import delivery

pytestmark = pytest.mark.integration


def _request(n: int) -> ev.Event[ev.DeliveryRequested]:
    return ev.make_event(
        ev.DeliveryRequested(
            delivery_id=f"dlv_g{n}", rule="r", webhook_id=f"evt_w{n}",
            url=f"http://hooks.test/{n}", body=b"{}", tenant="default",
        ),
        source="/test",
    )  # fmt: skip


def _outcomes(req: ev.Event[ev.DeliveryRequested], n: int) -> list[ev.Event[Any]]:
    """What an attempt yields: odd deliveries succeed, even ones wait for a retry, every
    fifth fails for good."""
    target = delivery.Target(url=req.data.url)
    status = 200 if n % 2 else (400 if n % 5 == 0 else 503)
    fields: dict[str, Any] = {"attempt": 1, "status_code": status, "error": None}
    fields["duration_ms"] = 1.0
    later = None if status != 503 else datetime.now(UTC) + timedelta(minutes=1)
    out = [
        delivery._outcome(
            ev.DeliveryAttempted, req, "attempt/1", target, next_attempt_at=later, **fields
        )
    ]
    if status == 200:
        out.append(delivery._outcome(ev.DeliverySucceeded, req, "outcome", target, **fields))
    elif status == 400:
        out.append(delivery._outcome(ev.DeliveryFailed, req, "outcome", target, **fields))
    return out


async def test_deliveries_committed_together_are_recorded_as_each_alone(rt: Runtime) -> None:
    count = 40
    reqs = [_request(n) for n in range(count)]
    await rt.outbox.commit(reqs)
    grouped = GroupedOutbox(rt.outbox)
    outs = [_outcomes(r, n) for n, r in enumerate(reqs)]
    results = await asyncio.gather(*(grouped.commit(o) for o in outs))
    assert grouped.groups < count  # they did share transactions
    for out, (inserted, known) in zip(outs, results, strict=True):
        assert [a.event.id for a in inserted] == [e.id for e in out]
        assert known == []
    rows = {
        r["delivery_id"]: (r["status"], r["attempts"], r["last_status_code"])
        for r in await rt.pool.fetch(
            "SELECT delivery_id, status, attempts, last_status_code FROM deliveries"
        )
    }
    for n in range(count):
        status = 200 if n % 2 else (400 if n % 5 == 0 else 503)
        want = {200: "succeeded", 400: "failed", 503: "retrying"}[status]
        assert rows[f"dlv_g{n}"] == (want, 1, status)
    # Committed again (a message redelivered after its commit): all known, nothing added.
    again = await asyncio.gather(*(grouped.commit(o) for o in outs))
    await grouped.close()
    assert all(inserted == [] for inserted, _ in again)
    total = await rt.pool.fetchval("SELECT count(*) FROM events")
    assert total == count + sum(len(o) for o in outs)


async def test_groups_commit_on_one_kept_connection_and_one_the_server_ended_is_replaced(
    rt: Runtime,
) -> None:
    reqs = [_request(n) for n in range(3)]
    grouped = GroupedOutbox(rt.outbox)  # the tests' pool holds 5: room to keep one
    try:
        await grouped.commit([reqs[0]])
        kept = grouped._conn.kept
        assert kept is not None
        # A gated step goes alone, on the kept connection too (its gate returns a row).
        inserted, _ = await grouped.commit([reqs[1]], gate=eventlog.Gate("SELECT 1", ()))
        assert [a.event.id for a in inserted] == [reqs[1].id]
        assert grouped._conn.kept is kept  # the same one, not taken from the pool again
        await rt.pool.execute("SELECT pg_terminate_backend($1)", kept.get_server_pid())
        await asyncio.sleep(0.5)  # the client learns that the server ended it
        inserted, _ = await grouped.commit([reqs[2]])
        assert [a.event.id for a in inserted] == [reqs[2].id]
        assert grouped._conn.kept is not None
        assert grouped._conn.kept is not kept
    finally:
        await grouped.close()
    assert grouped._conn.kept is None  # given back: the pool can close
    total = await rt.pool.fetchval("SELECT count(*) FROM events")
    assert total == 3


async def test_no_connection_is_kept_when_the_pool_has_no_room_for_it(rt: Runtime) -> None:
    small = await asyncpg.create_pool(rt.settings.database.url, min_size=0, max_size=3,
                                      server_settings={"search_path": rt.settings.database.schema})  # fmt: skip
    try:
        grouped = GroupedOutbox(Outbox(small, rt.bus))
        inserted, _ = await grouped.commit([_request(0)])
        assert len(inserted) == 1
        assert grouped._conn.kept is None
        await grouped.close()
    finally:
        await small.close()
