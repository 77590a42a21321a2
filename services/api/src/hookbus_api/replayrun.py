"""Running a replay job: its selection in log order, in batches at a bounded rate, the
cursor moved only once a batch is recorded (redrive) or acknowledged (republish)."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TextIO

import msgspec
from msgspec.structs import replace

from hookbus_common import events as ev
from hookbus_common.bus import MSG_ID
from hookbus_common.consumer import REPLAY_HEADER
from hookbus_common.eventlog import Appended, LoggedEvent
from hookbus_common.events import Event, ReplayMode, ReplaySelection
from hookbus_common.service import Runtime

from . import replayselect, replaystore
from .replaystore import ReplayJob

SOURCE = "/hookbus/cli/replay"
DEFAULT_RATE = 50.0


def batch_size(rate: float) -> int:
    """About five batches a second, 1 to 100 events each: the cursor moves often, and a
    stop waits for at most one batch."""
    return max(1, min(100, int(rate / 5)))


class Pacer:
    """At most ``rate`` events a second: each batch waits until the events before it have
    had their share of time. Nothing is saved up while a batch is being worked on, so the
    rate is never exceeded by more than one batch."""

    def __init__(
        self,
        rate: float,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("the rate must be above 0")
        self.interval = 1.0 / rate
        self.clock = clock
        self.sleep = sleep
        self._next: float | None = None

    async def take(self, n: int) -> None:
        now = self.clock()
        if self._next is None or self._next < now:
            self._next = now
        wait = self._next - now
        self._next += n * self.interval
        if wait > 0:
            await self.sleep(wait)


class Reporter(Protocol):
    def update(self, done: int) -> None: ...


class Progress:
    """How far a replay got, on stderr: a bar redrawn in place on a terminal; otherwise a
    plain count line at most every ``every`` seconds, and one at the end."""

    WIDTH = 30

    def __init__(
        self,
        total: int,
        *,
        done: int = 0,
        label: str = "",
        stream: TextIO | None = None,
        tty: bool | None = None,
        clock: Callable[[], float] = time.monotonic,
        every: float = 5.0,
    ) -> None:
        self.total = total
        self.done = done
        self.label = label
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.clock = clock
        self.every = every
        self._written_at: float | None = None
        self._written: int | None = None

    def text(self) -> str:
        pct = 100 * self.done // self.total if self.total else 100
        return f"{self.label}: {self.done}/{self.total} ({pct}%)"

    def update(self, done: int) -> None:
        self.done = done
        now = self.clock()
        if self.tty:
            filled = self.WIDTH * self.done // self.total if self.total else self.WIDTH
            bar = "#" * filled + "-" * (self.WIDTH - filled)
            self.stream.write(f"\r[{bar}] {self.text()}")
            self.stream.flush()
            self._written = done
        elif self._written_at is None or now - self._written_at >= self.every:
            self._line(now)

    def _line(self, now: float) -> None:
        self.stream.write(self.text() + "\n")
        self.stream.flush()
        self._written_at = now
        self._written = self.done

    def close(self) -> None:
        if self.tty:
            if self._written is not None:
                self.stream.write("\n")
                self.stream.flush()
        elif self._written != self.done:
            self._line(self.clock())


# ---------------------------------------------------------------- the replay job


async def _record(rt: Runtime, conn: Any, events: Sequence[Event[Any]]) -> list[Appended]:
    """Commit events on ``conn`` (inside the caller's transaction); the caller publishes
    them once that has committed."""
    new, known = await rt.outbox.commit(events, conn=conn)
    return [*new, *known]


def started_id(replay_id: str) -> str:
    return ev.derived_id(replay_id, "started")


async def create(
    rt: Runtime,
    conn: Any,
    *,
    mode: ReplayMode,
    selection: ReplaySelection,
    requested_by: str | None,
    reason: str | None,
    rate: float,
    max_seq: int,
    selected: int,
) -> ReplayJob:
    """Record a new replay job and its ``replay.started`` event, in one transaction."""
    job = ReplayJob(
        replay_id=ev.new_id("rpl"), mode=mode, selection=selection, requested_by=requested_by,
        reason=reason, status="running", max_seq=max_seq, cursor_seq=0, selected=selected,
        done=0, rate=rate,
    )  # fmt: skip
    started = ev.make_event(
        ev.ReplayStarted(
            replay_id=job.replay_id, mode=mode, requested_by=requested_by,
            selection=selection, reason=reason, selected=selected,
        ),
        source=SOURCE,
        id=started_id(job.replay_id),
    )  # fmt: skip
    async with conn.transaction():
        await replaystore.create(conn, job)
        recorded = await _record(rt, conn, [started])
    await rt.outbox.publish(recorded)
    return job


async def resume(rt: Runtime, conn: Any, job: ReplayJob, *, by: str | None) -> ReplayJob:
    """Mark a stopped replay as running again, with a ``replay.resumed`` event."""
    resumed = ev.make_event(
        ev.ReplayResumed(
            replay_id=job.replay_id, mode=job.mode, requested_by=by,
            selected=job.selected, done=job.done,
        ),
        source=SOURCE,
    )  # fmt: skip
    async with conn.transaction():
        await replaystore.set_status(conn, job.replay_id, "running")
        await replaystore.set_rate(conn, job.replay_id, job.rate)
        recorded = await _record(rt, conn, [resumed])
    await rt.outbox.publish(recorded)
    return replace(job, status="running")


def replay_event(job: ReplayJob, row: LoggedEvent) -> Event[ev.WebhookReplayed]:
    """The webhook.replayed that redrives ``row``: its id derived from the replay job's and
    the original's (a fresh id for every replay job, the same one if a batch is redone)."""
    hook = msgspec.json.decode(row.event.data, type=ev.WebhookReceived)
    data = ev.WebhookReplayed(
        replay_of=row.event.id, webhook=hook, requested_by=job.requested_by, reason=job.reason
    )
    event = ev.make_event(
        data,
        source=SOURCE,
        id=ev.derived_id(job.replay_id, f"redrive/{row.event.id}"),
        tenant=row.event.tenant,
        subject=row.event.subject,
    )
    return replace(event, causationid=started_id(job.replay_id))


def republish_id(job: ReplayJob, row: LoggedEvent) -> str:
    """The ``Nats-Msg-Id`` of a republished event: not the original's (which JetStream's
    duplicate window may still hold), and the same if a batch is published again."""
    return f"{row.event.id}/{job.replay_id}"


async def _redrive(rt: Runtime, conn: Any, job: ReplayJob, rows: Sequence[LoggedEvent]) -> None:
    replays = [replay_event(job, r) for r in rows]
    async with conn.transaction():
        recorded = await _record(rt, conn, replays)
        await replaystore.advance(conn, job.replay_id, rows[-1].seq, len(rows))
    await rt.outbox.publish(recorded)


async def _republish(rt: Runtime, conn: Any, job: ReplayJob, rows: Sequence[LoggedEvent]) -> None:
    futures: list[asyncio.Future[Any]] = []
    try:
        async with asyncio.timeout(rt.bus.settings.publish_timeout):
            for r in rows:
                headers = {MSG_ID: republish_id(job, r), REPLAY_HEADER: job.replay_id}
                futures.append(
                    await rt.bus.js.publish_async(r.bus_subject, r.payload(), headers=headers)
                )
            await asyncio.gather(*futures)
    finally:
        for f in futures:
            f.cancel()
    await replaystore.advance(conn, job.replay_id, rows[-1].seq, len(rows))


async def _nap(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


async def run(
    rt: Runtime,
    conn: Any,
    job: ReplayJob,
    *,
    stop: asyncio.Event,
    progress: Reporter | None = None,
    pacer: Pacer | None = None,
) -> ReplayJob:
    """Go through the job's selection after its cursor; returns the job as it is left:
    ``finished`` (with its ``replay.finished`` event), or ``interrupted`` when ``stop`` was
    set first or something failed (which is raised). The caller holds the job's lock."""
    size = batch_size(job.rate)
    pacer = pacer or Pacer(job.rate, sleep=lambda s: _nap(stop, s))
    try:
        while not stop.is_set():
            rows = await replayselect.batch(
                conn, job.selection, job.mode, after=job.cursor_seq, upto=job.max_seq, limit=size
            )
            if not rows:
                return await _finish(rt, conn, job)
            await pacer.take(len(rows))
            if stop.is_set():
                break
            if job.mode == "redrive":
                await _redrive(rt, conn, job, rows)
            else:
                await _republish(rt, conn, job, rows)
            job = replace(job, cursor_seq=rows[-1].seq, done=job.done + len(rows))
            if progress is not None:
                progress.update(job.done)
    except BaseException:
        with contextlib.suppress(Exception):
            await replaystore.set_status(conn, job.replay_id, "interrupted")
        raise
    await replaystore.set_status(conn, job.replay_id, "interrupted")
    return replace(job, status="interrupted")


async def _finish(rt: Runtime, conn: Any, job: ReplayJob) -> ReplayJob:
    finished = ev.make_event(
        ev.ReplayFinished(
            replay_id=job.replay_id, mode=job.mode, requested_by=job.requested_by,
            selected=job.selected, done=job.done,
        ),
        source=SOURCE,
        id=ev.derived_id(job.replay_id, "finished"),
    )  # fmt: skip
    async with conn.transaction():
        await replaystore.set_status(conn, job.replay_id, "finished")
        recorded = await _record(rt, conn, [finished])
    await rt.outbox.publish(recorded)
    return replace(job, status="finished")
