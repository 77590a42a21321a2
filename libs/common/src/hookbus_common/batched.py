"""Calls that come while one is under way go together in the next: a read many handlers
make at once costs one round trip, not one each.

The same shape as the group commit (``groupedoutbox``): nothing waits on a timer, so a
lone call runs at once, and under load calls gather while the previous batch runs. Each
caller gets its own result, or the exception the batch raised.

With ``lanes`` above one, that many batches may run at once (reads, unlike commits, need
no order): a call that comes while one batch runs goes at once in another lane instead
of waiting for the first to end, and calls gather only once every lane is busy. Under
load that halves the wait of a read behind another's batch, for a few more round trips.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Batched(Generic[A, R]):
    """``await batched(arg)`` runs ``run`` over the args gathered meanwhile (at most
    ``max_size`` at once, and at most ``lanes`` batches at a time); ``run`` returns one
    result per arg, in their order."""

    def __init__(
        self,
        run: Callable[[Sequence[A]], Awaitable[Sequence[R]]],
        *,
        max_size: int = 256,
        lanes: int = 1,
    ) -> None:
        self._run = run
        self.max_size = max_size
        self.lanes = max(1, lanes)
        self.batches = 0  # batches run (how much gathering there was)
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._leaders: set[asyncio.Task[None]] = set()

    async def __call__(self, arg: A) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((arg, done))
        if len(self._leaders) < self.lanes:
            # Its own task: a caller that stops waiting does not stop the others' batch.
            leader = asyncio.create_task(self._lead(), name="batched")
            self._leaders.add(leader)
            leader.add_done_callback(self._leaders.discard)
        return await done

    async def _lead(self) -> None:
        while self._waiting:
            batch = self._waiting[: self.max_size]
            del self._waiting[: len(batch)]
            await self._one(batch)

    async def _one(self, batch: list[tuple[A, asyncio.Future[R]]]) -> None:
        try:
            results = await self._run([arg for arg, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} gave {len(results)} results")
        except Exception as exc:
            for _, done in batch:
                if not done.done():
                    done.set_exception(exc)
            return
        self.batches += 1
        for (_, done), result in zip(batch, results, strict=True):
            if not done.done():  # its caller stopped waiting (cancelled)
                done.set_result(result)
