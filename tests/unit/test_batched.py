"""Calls made while a batch runs go together in the next; each caller gets its own result
or the batch's exception."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from hookbus_common.batched import Batched


async def test_a_lone_call_runs_at_once_and_calls_meanwhile_go_together() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def run(args: Sequence[int]) -> list[int]:
        seen.append(list(args))
        if len(seen) == 1:
            await gate.wait()  # the first batch is slow: the others gather meanwhile
        return [a * 10 for a in args]

    batched: Batched[int, int] = Batched(run)
    first = asyncio.create_task(batched(1))
    await asyncio.sleep(0)
    rest = [asyncio.create_task(batched(n)) for n in (2, 3, 4)]
    await asyncio.sleep(0)
    gate.set()
    assert await first == 10
    assert [await r for r in rest] == [20, 30, 40]
    assert seen == [[1], [2, 3, 4]]
    assert batched.batches == 2


async def test_a_batch_that_fails_fails_each_of_its_callers() -> None:
    async def run(args: Sequence[int]) -> list[int]:
        raise ConnectionError("postgres away")

    batched: Batched[int, int] = Batched(run)
    calls = [asyncio.create_task(batched(n)) for n in range(3)]
    for call in calls:
        with pytest.raises(ConnectionError):
            await call
    # And the next call gets a batch of its own.
    ok: Batched[int, int] = Batched(lambda args: asyncio.sleep(0, [a for a in args]))
    assert await ok(7) == 7


async def test_batches_hold_at_most_max_size() -> None:
    sizes: list[int] = []

    async def run(args: Sequence[int]) -> list[int]:
        sizes.append(len(args))
        await asyncio.sleep(0)
        return list(args)

    batched: Batched[int, int] = Batched(run, max_size=4)
    got = await asyncio.gather(*(batched(n) for n in range(10)))
    assert got == list(range(10))
    assert max(sizes) <= 4
    assert sum(sizes) == 10


async def test_a_cancelled_caller_does_not_stop_the_others() -> None:
    gate = asyncio.Event()

    async def run(args: Sequence[int]) -> list[int]:
        await gate.wait()
        return list(args)

    batched: Batched[int, int] = Batched(run)
    a = asyncio.create_task(batched(1))
    b = asyncio.create_task(batched(2))
    await asyncio.sleep(0)
    a.cancel()
    gate.set()
    assert await b == 2
    with pytest.raises(asyncio.CancelledError):
        await a


async def test_with_two_lanes_a_call_goes_at_once_beside_a_running_batch() -> None:
    seen: list[list[int]] = []
    gate = asyncio.Event()

    async def run(args: Sequence[int]) -> list[int]:
        seen.append(list(args))
        if len(seen) == 1:
            await gate.wait()  # the first batch is slow
        return [a * 10 for a in args]

    batched: Batched[int, int] = Batched(run, lanes=2)
    first = asyncio.create_task(batched(1))
    await asyncio.sleep(0)
    second = asyncio.create_task(batched(2))
    # The second lane takes it while the first batch still runs.
    assert await second == 20
    assert seen == [[1], [2]]
    # Both lanes busy: calls gather for the next free one.
    gate2 = asyncio.Event()
    seen.clear()

    async def slow(args: Sequence[int]) -> list[int]:
        seen.append(list(args))
        await gate2.wait()
        return [a * 10 for a in args]

    two: Batched[int, int] = Batched(slow, lanes=2)
    calls = [asyncio.create_task(two(n)) for n in range(5)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert seen == [[0, 1, 2, 3, 4]]  # one lane took all that were there
    gate2.set()
    gate.set()
    assert [await c for c in calls] == [0, 10, 20, 30, 40]
    assert await first == 10
