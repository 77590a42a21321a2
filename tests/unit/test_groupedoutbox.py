"""Group commit's bookkeeping, with an outbox of the test's standing in for Postgres (the
commits themselves, on real Postgres, are in tests/integration/test_groupedoutbox.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from hookbus_common import events as ev
from hookbus_common.errors import OutageError
from hookbus_common.eventlog import Appended, Pending
from hookbus_common.groupedoutbox import GroupedOutbox


class Poisoned(Exception):
    pass


class Connection:
    """A placeholder: ``Recording`` commits on none."""

    def is_closed(self) -> bool:
        return False


class Pool:
    def get_max_size(self) -> int:
        return 10

    async def acquire(self) -> Connection:
        return Connection()

    async def release(self, conn: Connection) -> None:
        return None


class Recording:
    """Commits nothing: records each batch; a batch holding ``poison`` fails, as does
    every batch while ``outage`` is set; each commit takes one turn of the loop."""

    def __init__(self, poison: str | None = None, outage: bool = False) -> None:
        self.pool: Any = Pool()
        self.bus: Any = None
        self.batches: list[list[str]] = []
        self.poison = poison
        self.outage = outage
        self.seen: set[str] = set()

    async def commit(
        self, batch: Sequence[Pending | ev.Event[Any]], *, conn: Any = None
    ) -> tuple[list[Appended], list[Appended]]:
        events = [p.event if isinstance(p, Pending) else p for p in batch]
        self.batches.append([e.id for e in events])
        await asyncio.sleep(0)
        if self.outage:
            raise OutageError("Postgres is away")
        if self.poison in {e.id for e in events}:
            raise Poisoned(self.poison)
        out = [Appended(seq=0, event=e, bus_subject="s", payload=b"") for e in events]
        inserted = [a for a in out if a.event.id not in self.seen]
        self.seen |= {e.id for e in events}
        return inserted, [a for a in out if a not in inserted]


def _event(n: int) -> ev.Event[Any]:
    return ev.make_event(
        ev.DeliverySucceeded(delivery_id=f"dlv_{n}", url="http://x.test/", attempt=1),
        source="/test",
        id=f"evt_{n}",
    )


def _grouped(inner: Recording, **kwargs: Any) -> GroupedOutbox:
    return GroupedOutbox(inner, **kwargs)  # type: ignore[arg-type]


async def test_a_commit_asked_for_while_one_is_under_way_goes_in_the_next() -> None:
    inner = Recording()
    grouped = _grouped(inner)
    first = asyncio.ensure_future(grouped.commit([_event(0)]))
    while not inner.batches:  # the first commit has begun
        await asyncio.sleep(0)
    await asyncio.gather(first, *(grouped.commit([_event(n)]) for n in range(1, 4)))
    assert inner.batches == [[_event(0).id], [_event(n).id for n in range(1, 4)]]


async def test_commits_asked_for_together_share_a_transaction_and_each_gets_its_own() -> None:
    inner = Recording()
    grouped = _grouped(inner)
    batches = [[_event(n), _event(100 + n)] for n in range(8)]
    results = await asyncio.gather(*(grouped.commit(b) for b in batches))
    # Asked for before the first commit began: one transaction for all eight.
    assert [len(b) for b in inner.batches] == [16]
    for batch, (inserted, known) in zip(batches, results, strict=True):
        assert [a.event.id for a in inserted] == [e.id for e in batch]
        assert known == []


async def test_an_event_recorded_already_comes_back_as_known_to_its_caller() -> None:
    inner = Recording()
    grouped = _grouped(inner)
    first = [_event(1)]
    await grouped.commit(first)
    again, fresh = await asyncio.gather(grouped.commit(first), grouped.commit([_event(2)]))
    assert again[0] == []
    assert [a.event.id for a in again[1]] == [first[0].id]
    assert [a.event.id for a in fresh[0]] == [_event(2).id]


async def test_one_batch_that_fails_fails_only_its_own_caller() -> None:
    bad = _event(3)
    inner = Recording(poison=bad.id)
    grouped = _grouped(inner)
    results = await asyncio.gather(
        grouped.commit([_event(0)]),
        grouped.commit([_event(1)]),
        grouped.commit([bad]),
        grouped.commit([_event(2)]),
        return_exceptions=True,
    )
    assert isinstance(results[2], Poisoned)
    for ok in (results[0], results[1], results[3]):
        assert not isinstance(ok, BaseException)
        assert len(ok[0]) == 1
    # The group failed as a whole, then each of its batches went alone.
    ids = [_event(0).id, _event(1).id, bad.id, _event(2).id]
    assert inner.batches == [ids, *([i] for i in ids)]


async def test_an_outage_reaches_every_caller_of_the_group_without_more_commits() -> None:
    inner = Recording(outage=True)
    grouped = _grouped(inner)
    results = await asyncio.gather(
        *(grouped.commit([_event(n)]) for n in range(4)), return_exceptions=True
    )
    assert all(isinstance(r, OutageError) for r in results)
    assert len(inner.batches) == 1  # never tried again one by one


async def test_the_same_event_asked_for_twice_is_never_in_one_statement() -> None:
    inner = Recording()
    grouped = _grouped(inner)
    twice = _event(7)
    await asyncio.gather(
        grouped.commit([_event(0)]), grouped.commit([twice]), grouped.commit([twice])
    )
    assert all(len(set(b)) == len(b) for b in inner.batches)
    assert sum(b.count(twice.id) for b in inner.batches) == 2


async def test_a_group_holds_at_most_max_events() -> None:
    inner = Recording()
    grouped = _grouped(inner, max_events=3)
    await asyncio.gather(*(grouped.commit([_event(n), _event(50 + n)]) for n in range(5)))
    assert max(len(b) for b in inner.batches) <= 3
    assert sorted(i for b in inner.batches for i in b) == sorted(
        e.id for n in range(5) for e in (_event(n), _event(50 + n))
    )


async def test_a_caller_that_stops_waiting_leaves_the_others_their_commit() -> None:
    inner = Recording()
    grouped = _grouped(inner)
    first = asyncio.ensure_future(grouped.commit([_event(0)]))
    await asyncio.sleep(0)
    left = asyncio.ensure_future(grouped.commit([_event(1)]))
    stays = asyncio.ensure_future(grouped.commit([_event(2)]))
    await asyncio.sleep(0)
    left.cancel()
    inserted, _ = await stays
    await first
    assert [a.event.id for a in inserted] == [_event(2).id]
    with pytest.raises(asyncio.CancelledError):
        await left
