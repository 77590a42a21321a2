"""Group commit: concurrent requests share one insert, so durability costs one round trip
per batch instead of one per webhook.

A batch the database refuses for what one of its rows holds is split in halves until the
rows it cannot store are alone: only they are refused (``Unstorable``), the others are
committed. A batch that fails for any other reason (the connection is lost) fails whole,
and nothing of it was recorded.
"""

from __future__ import annotations

import asyncio
import logging
import time

import asyncpg
from prometheus_client import Counter, Histogram

from hookbus_common import eventlog
from hookbus_common.db import Kept
from hookbus_common.eventlog import Appended, Pending
from hookbus_common.outbox import Outbox

from .refusals import Unstorable

log = logging.getLogger(__name__)

COMMIT_SECONDS = Histogram(
    "hookbus_receiver_commit_seconds",
    "Group commits: waiting for a connection plus the insert, per batch",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
BATCH_SIZE = Histogram(
    "hookbus_receiver_commit_batch_size",
    "Webhooks per group commit",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
ISOLATED = Counter(
    "hookbus_receiver_commit_isolated_total",
    "Batches the event log refused for a row's content, then committed without that row",
)
# A commit this slow holds every request of its batch; say so, with where the time went.
SLOW_COMMIT_SECONDS = 0.1

Batch = list[tuple[Pending, "asyncio.Future[Recorded]"]]


def row_fault(exc: BaseException) -> bool:
    """Whether a failed insert was refused for what its rows hold, so the same rows can
    never be stored and committing them apart finds the culprit: Postgres's data errors
    (NUL in text, invalid input), limits a value exceeded, constraint violations, and
    strings that cannot be encoded at all. Anything else is the database or the way to it.
    """
    return isinstance(
        exc,
        asyncpg.DataError
        | asyncpg.ProgramLimitExceededError
        | asyncpg.IntegrityConstraintViolationError
        | UnicodeError,
    )


class Recorded:
    """The outcome of recording one inbound webhook."""

    __slots__ = ("duplicate", "event_id")

    def __init__(self, event_id: str, duplicate: bool) -> None:
        self.event_id = event_id
        self.duplicate = duplicate


class GroupCommitter:
    def __init__(
        self,
        outbox: Outbox,
        *,
        batch_size: int = 64,
        interval: float = 0.002,
        max_flushes: int = 4,
    ) -> None:
        self.outbox = outbox
        self.batch_size = batch_size
        self.interval = interval
        self._queue: Batch = []
        self._wake = asyncio.Event()
        self._flushes = asyncio.Semaphore(max_flushes)
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: asyncio.Task[None] | None = None
        self._closing = False
        self._flushing = 0
        # A connection kept between flushes: at low rates each webhook is a flush of its
        # own, and taking a connection from the pool and giving it back cost about a
        # tenth of the receiver's CPU per webhook. Kept only while the pool has room for
        # it beside every flush in flight and the relay.
        self._conn = Kept(outbox.pool, keep=outbox.pool.get_max_size() > max_flushes + 2)

    def start(self) -> None:
        self._runner = asyncio.create_task(self._run(), name="group-commit")

    async def close(self) -> None:
        """Flush what is queued (publishes in flight are the outbox's to drain)."""
        self._closing = True
        self._wake.set()
        if self._runner is not None:
            await self._runner
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=10)
        await self._conn.close()

    async def record(self, pending: Pending) -> Recorded:
        """Return once ``pending`` is committed (or was already recorded)."""
        if self._closing:
            raise RuntimeError("receiver is shutting down")
        fut: asyncio.Future[Recorded] = asyncio.get_running_loop().create_future()
        self._queue.append((pending, fut))
        if len(self._queue) >= self.batch_size or len(self._queue) == 1:
            self._wake.set()
        return await fut

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self._queue:
                if self._closing:
                    return
                continue
            if (
                self._flushing
                and len(self._queue) < self.batch_size
                and self.interval > 0
                and not self._closing
            ):
                # A flush is in flight, so the database is busy anyway: let concurrent
                # requests join this batch. With nothing in flight, flush at once.
                await asyncio.sleep(self.interval)
            while self._queue:
                batch, self._queue = self._queue[: self.batch_size], self._queue[self.batch_size :]
                await self._flushes.acquire()
                self._start_flush(batch)
            if self._closing:
                while self._tasks:
                    await asyncio.wait(self._tasks)
                return

    def _start_flush(self, batch: Batch) -> None:
        """Flush ``batch`` in a task of its own (its place in ``_flushes`` is taken)."""
        task = asyncio.create_task(self._flush(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _observe(self, size: int, started: float, acquired: float) -> None:
        done = time.perf_counter()
        COMMIT_SECONDS.observe(done - started)
        BATCH_SIZE.observe(size)
        if done - started >= SLOW_COMMIT_SECONDS:
            log.warning(
                "slow group commit",
                extra={
                    "batch": size,
                    "pool_wait_ms": round((acquired - started) * 1000, 1),
                    "insert_ms": round((done - acquired) * 1000, 1),
                    "flushes_in_flight": self._flushing,
                },
            )

    async def _flush(self, batch: Batch) -> None:
        self._flushing += 1
        started = time.perf_counter()
        inserted: list[Appended] = []
        try:
            try:
                async with self._conn.use() as conn:
                    acquired = time.perf_counter()
                    await self._commit(conn, batch, inserted)
                self._observe(len(batch), started, acquired)
            except Exception as exc:
                # Nothing of what is still unanswered was recorded: they may retry (503).
                for _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc)
        finally:
            self._flushing -= 1
            self._flushes.release()
        # Answering did not wait for NATS (the outbox row makes the publish certain); the
        # publish goes on in this task, which close() waits for.
        if inserted:
            await self.outbox.publish(inserted)

    async def _commit(
        self, conn: asyncpg.Connection, batch: Batch, inserted: list[Appended]
    ) -> None:
        """Commit ``batch`` and answer its requests, adding what was new to ``inserted``."""
        try:
            new, known = await self.outbox.commit([p for p, _ in batch], conn=conn)
        except Exception as exc:
            if not row_fault(exc):
                raise
            if len(batch) == 1:
                self._refuse(batch[0], exc)
            else:
                ISOLATED.inc()
                half = len(batch) // 2
                await self._commit(conn, batch[:half], inserted)
                await self._commit(conn, batch[half:], inserted)
            return
        keys = [p.dedupe_key for p, _ in batch if p.dedupe_key]
        originals = await eventlog.ids_by_dedupe_key(conn, keys) if known and keys else {}
        inserted += new
        new_ids = {a.event.id for a in new}
        for p, fut in batch:
            if fut.done():  # the request went away; its event is recorded all the same
                continue
            if p.event.id in new_ids:
                fut.set_result(Recorded(p.event.id, duplicate=False))
            else:
                original = originals.get(p.dedupe_key or "", p.event.id)
                fut.set_result(Recorded(original, duplicate=True))

    @staticmethod
    def _refuse(item: tuple[Pending, asyncio.Future[Recorded]], exc: Exception) -> None:
        pending, fut = item
        # The driver's message may quote the value; the class and SQLSTATE say enough.
        log.warning(
            "the event log refused a delivery's content; refused it alone",
            extra={
                "event": pending.event.id,
                "error": type(exc).__name__,
                "sqlstate": getattr(exc, "sqlstate", None),
            },
        )
        if not fut.done():
            fut.set_exception(Unstorable())
