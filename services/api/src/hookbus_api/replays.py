"""Replays started through the API: counted and recorded at once, then run in this process
(one task each, at most ``api.max_replays`` at a time) with the same code ``hookbus replay``
runs. A replay this process could not finish (it stopped) stays resumable with
``hookbus replay --resume``."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from hookbus_common.events import ReplaySelection
from hookbus_common.service import Runtime

from . import replayrun, replayselect, replaystore
from .replayrun import DEFAULT_RATE
from .replaystore import ReplayJob
from .schemas import ReplayStarted, StartReplay

log = logging.getLogger(__name__)


def selection(req: StartReplay, now: datetime) -> ReplaySelection:
    """The selection a request names; ValueError says what is wrong with it."""
    return replayselect.selection(
        now=now, since=req.since, until=req.until, source=req.source, event=req.event,
        type=req.type, tenant=req.tenant, correlation=req.correlation,
        failed_jobs=req.failed_jobs, dead_deliveries=req.dead_deliveries,
    )  # fmt: skip


class Replays:
    def __init__(self, rt: Runtime, *, limit: int) -> None:
        self.rt = rt
        self.stop = asyncio.Event()
        self._slots = asyncio.Semaphore(limit)
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, req: StartReplay, *, by: str) -> ReplayStarted:
        if req.rate is not None and not req.rate > 0:
            raise ValueError("rate: must be above 0")
        sel = selection(req, datetime.now(UTC))
        async with self.rt.pool.acquire() as conn:
            upto = await replayselect.last_seq(conn)
            selected = await replayselect.count(conn, sel, req.mode, upto)
            answer = ReplayStarted(
                selected=selected,
                description=replayselect.describe(sel),
                selection=sel,
                dry_run=req.dry_run,
            )
            if req.dry_run or selected == 0:
                return answer
            job = await replayrun.create(
                self.rt, conn, mode=req.mode, selection=sel, requested_by=by,
                reason=req.reason, rate=req.rate or DEFAULT_RATE, max_seq=upto,
                selected=selected,
            )  # fmt: skip
        task = asyncio.create_task(self._run(job), name=f"replay-{job.replay_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return ReplayStarted(
            selected=selected,
            description=answer.description,
            selection=sel,
            replay=job,
        )

    async def _run(self, job: ReplayJob) -> None:
        try:
            async with self._slots, self.rt.pool.acquire() as conn:
                if not await replaystore.try_lock(conn, job.replay_id):
                    return  # taken up by `hookbus replay --resume` meanwhile
                try:
                    done = await replayrun.run(self.rt, conn, job, stop=self.stop)
                finally:
                    await replaystore.unlock(conn, job.replay_id)
            log.info(
                "replay ended",
                extra={"replay_id": job.replay_id, "status": done.status, "done": done.done},
            )
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("replay stopped", extra={"replay_id": job.replay_id})

    async def wait(self) -> None:
        """Let running replays finish (tests; a person watching)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def close(self, grace: float = 10.0) -> None:
        """Stop: each replay finishes the batch in hand and is left interrupted."""
        self.stop.set()
        if not self._tasks:
            return
        _, pending = await asyncio.wait(list(self._tasks), timeout=grace)
        for t in pending:
            t.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*pending, return_exceptions=True)


async def recent(rt: Runtime, limit: int) -> list[ReplayJob]:
    async with rt.pool.acquire() as conn:
        return await replaystore.recent(conn, limit=limit)
