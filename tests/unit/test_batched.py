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


async def turns() -> None:
    """Let the tasks made so far, and the batches they start, run up to their waits."""
    for _ in range(3):
        await asyncio.sleep(0)


async def test_two_lanes_run_a_call_beside_a_running_batch_and_gather_when_both_are_busy() -> None:
    seen: list[list[int]] = []
    gates = [asyncio.Event(), asyncio.Event()]

    async def run(args: Sequence[int]) -> list[int]:
        n = len(seen)
        seen.append(list(args))
        if n < len(gates):
            await gates[n].wait()  # the first two batches hold their lanes
        return [a * 10 for a in args]

    batched: Batched[int, int] = Batched(run, lanes=2)
    first = asyncio.create_task(batched(1))
    await turns()
    second = asyncio.create_task(batched(2))
    await turns()
    assert seen == [[1], [2]]  # the second went at once, in the other lane
    rest = [asyncio.create_task(batched(n)) for n in (3, 4, 5)]
    await turns()
    assert seen == [[1], [2]]  # both lanes busy: they wait
    gates[0].set()
    assert await first == 10
    assert [await r for r in rest] == [30, 40, 50]
    assert seen[2] == [3, 4, 5]  # together, in the lane that came free
    gates[1].set()
    assert await second == 20
