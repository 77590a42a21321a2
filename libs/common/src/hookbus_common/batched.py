"""Calls that come while one is under way go together in the next: a read many handlers
make at once costs one round trip, not one each.

The same shape as the group commit (``groupedoutbox``): nothing waits on a timer, so a
lone call runs at once, and under load calls gather while the previous batch runs. Each
caller gets its own result, or the exception the batch raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

A = TypeVar("A")
R = TypeVar("R")


class Batched(Generic[A, R]):
    """``await batched(arg)`` runs ``run`` over the args gathered meanwhile (at most
    ``max_size`` at once); ``run`` returns one result per arg, in their order."""

    def __init__(
        self, run: Callable[[Sequence[A]], Awaitable[Sequence[R]]], *, max_size: int = 256
    ) -> None:
        self._run = run
        self.max_size = max_size
        self.batches = 0  # batches run (how much gathering there was)
        self._waiting: list[tuple[A, asyncio.Future[R]]] = []
        self._leader: asyncio.Task[None] | None = None

    async def __call__(self, arg: A) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._waiting.append((arg, done))
        if self._leader is None:
            # Its own task: a caller that stops waiting does not stop the others' batch.
            self._leader = asyncio.create_task(self._lead(), name="batched")
        return await done

    async def _lead(self) -> None:
        try:
            while self._waiting:
                batch = self._waiting[: self.max_size]
                del self._waiting[: len(batch)]
                await self._one(batch)
        finally:
            self._leader = None

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
