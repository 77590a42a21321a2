"""Commit then publish: events become durable in Postgres first, then reach the bus.

Publishing straight after the commit keeps latency low; the outbox row written with each
event makes it certain: rows whose publish was never confirmed (the process died, NATS was
down) are published by the relay, which every service process runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from typing import Any

import asyncpg

from . import eventlog, metrics, readmodels
from .bus import Bus
from .eventlog import Appended, Gate, Pending
from .events import Event

log = logging.getLogger(__name__)


_APPENDED: dict[str, Any] = {}


def _appended(event_type: str) -> Any:
    """The appended-events counter of a type, made once: ``labels`` takes a lock and a
    lookup on every call, once per event on the hot path."""
    child = _APPENDED.get(event_type)
    if child is None:
        child = _APPENDED[event_type] = metrics.EVENTS_APPENDED.labels(event_type)
    return child


class Outbox:
    def __init__(self, pool: asyncpg.Pool, bus: Bus) -> None:
        self.pool = pool
        self.bus = bus
        self._done: list[int] = []
        self._done_ready = asyncio.Event()
        self._publishing: set[asyncio.Task[bool]] = set()
        # When a publish of ours last failed (monotonic): the relay rounds stay prompt
        # until those rows are old enough for it to take them.
        self._failed_at: float | None = None
        self._relay_soon = asyncio.Event()

    async def commit(
        self,
        batch: Sequence[Pending | Event[Any]],
        *,
        conn: asyncpg.Connection | None = None,
        gate: Gate | None = None,
    ) -> tuple[list[Appended], list[Appended]]:
        """Append events and update read models in one transaction; returns (new, known).

        With a ``gate`` (``eventlog.insert``), the events are appended only if it returns
        a row, in the same statement; a batch whose read-model changes need a
        transaction of their own cannot be gated."""
        pending = [p if isinstance(p, Pending) else Pending(p) for p in batch]
        if conn is None:
            async with self.pool.acquire() as c:
                return await self._commit(c, pending, gate)
        return await self._commit(conn, pending, gate)

    async def _commit(
        self, conn: asyncpg.Connection, pending: list[Pending], gate: Gate | None = None
    ) -> tuple[list[Appended], list[Appended]]:
        # One INSERT … WITH statement is atomic by itself, read-model changes included: no
        # BEGIN/COMMIT round trips. Only batches it cannot express take a transaction.
        parts = readmodels.fragments([p.event for p in pending])
        if parts is None and gate is not None:
            raise ValueError("a batch whose read models need a transaction cannot be gated")
        if parts is None:
            async with conn.transaction():
                inserted, known = await eventlog.insert(conn, self.bus.prefix, pending)
                await readmodels.project(conn, inserted)
        else:
            inserted, known = await eventlog.insert(
                conn, self.bus.prefix, pending, ctes=parts.ctes, args=parts.args, gate=gate
            )
        for a in inserted:
            _appended(a.event.type).inc()
        return inserted, known

    async def publish(self, appended: Sequence[Appended]) -> bool:
        """Publish committed events; on failure leave them to the relay and say so."""
        if not appended:
            return True
        try:
            await self.bus.publish_many([(a.bus_subject, a.event.id, a.payload) for a in appended])
        except Exception as exc:
            metrics.PUBLISH_FAILURES.inc(len(appended))
            self._failed_at = time.monotonic()
            self._relay_soon.set()
            log.warning(
                "publish failed; the outbox relay will retry",
                extra={"events": len(appended), "error": repr(exc)},
            )
            return False
        metrics.EVENTS_PUBLISHED.inc(len(appended))
        self._done.extend(a.seq for a in appended if a.seq)
        self._done_ready.set()
        return True

    async def commit_and_publish(self, batch: Sequence[Pending | Event[Any]]) -> list[Appended]:
        inserted, known = await self.commit(batch)
        # Known events were committed by an earlier attempt that may have died before
        # publishing; publishing again is harmless (Nats-Msg-Id dedupes, consumers are
        # idempotent) and saves waiting for the relay.
        await self.publish([*inserted, *known])
        return inserted

    def publish_later(self, appended: Sequence[Appended]) -> None:
        """Publish committed events without waiting: they are durable already, and the
        outbox row makes the publish certain even if this process dies first."""
        if not appended:
            return
        task = asyncio.create_task(self.publish(appended))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)

    async def drain(self, within: float = 5.0) -> None:
        """Wait for publishes in flight (at shutdown); what is left the relay will send."""
        if self._publishing:
            await asyncio.wait(self._publishing, timeout=within)

    async def run_cleaner(self, stop: asyncio.Event, interval: float = 0.5) -> None:
        """Delete outbox rows of published events in batches, off the hot path: at most
        one statement per ``interval`` (well inside the relay's ``older_than``)."""
        while not stop.is_set() or self._done:
            if not self._done:
                self._done_ready.clear()
                waiter = asyncio.ensure_future(self._done_ready.wait())
                stopper = asyncio.ensure_future(stop.wait())
                await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
                waiter.cancel()
                stopper.cancel()
                continue
            seqs, self._done = self._done, []
            try:
                async with self.pool.acquire() as conn:
                    await eventlog.forget_published(conn, seqs)
            except Exception as exc:
                # The rows stay; the relay will publish them once more, which is harmless.
                log.warning("outbox cleanup failed", extra={"error": repr(exc)})
                if stop.is_set():
                    return
            # Rows gather meanwhile: one DELETE for all of them (a stop ends the wait).
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)

    async def relay_once(self, *, older_than: float = 2.0, limit: int = 500) -> int:
        """Publish outbox rows left behind; returns how many were published."""
        async with self.pool.acquire() as conn:
            if not await eventlog.has_unpublished(conn, older_than=older_than):
                return 0
            async with conn.transaction():
                rows = await eventlog.claim_unpublished(conn, older_than=older_than, limit=limit)
                if not rows:
                    return 0
                await self.bus.publish_many(
                    [(r.bus_subject, r.event.id, r.payload()) for r in rows]
                )
                await eventlog.forget_published(conn, [r.seq for r in rows])
        metrics.EVENTS_RELAYED.inc(len(rows))
        log.info("relayed events left in the outbox", extra={"events": len(rows)})
        return len(rows)

    async def run_relay(
        self,
        stop: asyncio.Event,
        *,
        interval: float = 1.0,
        idle_interval: float = 10.0,
        older_than: float = 2.0,
    ) -> None:
        """Publish rows left behind for more than ``older_than`` seconds, until ``stop``.

        Rounds are ``interval`` apart while there is work: rows were relayed, a round
        failed (NATS or Postgres away), or a publish of ours failed and its rows are not
        yet old enough to take. Rounds that find nothing back off, doubling up to
        ``idle_interval``: only rows of a process that died between its commit and its
        publish wait that long (at most ``idle_interval + older_than``). A failed publish
        here ends a long wait at once.
        """
        wait = interval
        while not stop.is_set():
            started = time.monotonic()
            busy = False
            try:
                while await self.relay_once(older_than=older_than) and not stop.is_set():
                    busy = True
            except Exception as exc:  # NATS or Postgres away: try again soon
                busy = True
                log.warning("outbox relay round failed", extra={"error": repr(exc)})
            failed_at = self._failed_at
            if failed_at is not None and started < failed_at + older_than:
                busy = True  # our unpublished rows are not old enough yet
            wait = interval if busy else min(idle_interval, wait * 2)
            self._relay_soon.clear()
            if self._failed_at != failed_at:
                wait = interval  # a publish failed during the round
            await self._relay_pause(stop, wait)

    async def _relay_pause(self, stop: asyncio.Event, wait: float) -> None:
        """Sleep ``wait`` seconds; a stop or a failed publish of ours ends it early."""
        stopped = asyncio.ensure_future(stop.wait())
        soon = asyncio.ensure_future(self._relay_soon.wait())
        try:
            await asyncio.wait({stopped, soon}, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
            soon.cancel()
