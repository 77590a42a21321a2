"""The runs this executor holds: their leases kept alive, ended at shutdown, and the runs a
dead executor left on this host found and ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import msgspec

from hookbus_common import events as ev
from hookbus_common.outbox import Outbox

from . import leases, outcomes, procs
from .config import ExecutorSettings
from .leases import Lease, Owner

log = logging.getLogger(__name__)


def marks(job_id: str, attempt: int) -> dict[str, str]:
    """Variables every process of a run has in its environment, wherever it runs (a shell
    action here, an SSH command, a container)."""
    return {"HOOKBUS_JOB_ID": job_id, "HOOKBUS_JOB_ATTEMPT": str(attempt)}


def local_marks(job_id: str, attempt: int) -> dict[str, str]:
    """``marks`` and one more that only the processes an executor spawns itself have: how
    a run's processes are found when its process group was never written down. An SSH
    command or a container on this same host carries the job's marks too, but is not the
    executor's to end."""
    return {**marks(job_id, attempt), "HOOKBUS_JOB_LOCAL": "1"}


# How long after its spawn an action's process group is written to its run's lease. Most
# actions have ended by then: their end is recorded instead, and nothing is written (a
# statement and a commit fewer per job). Those still running are written then, together
# in one statement. Should the executor die before, its successor finds the run's
# processes by their environment (``local_marks``), as it does for a run whose record
# never reached Postgres.
SPAWN_RECORD_DELAY = 0.2


class Ended(msgspec.Struct, frozen=True):
    """What ``end_processes`` found of a run on this host."""

    running: bool
    """Whether anything of it was running (and has been ended)."""
    pgid: int | None
    """Its process group: the one recorded, or else the one group found by its marks."""


async def end_processes(lease: Lease, host: procs.Host, grace: float) -> Ended:
    """End what is left of ``lease``'s run on this host."""
    if lease.host != host.id:
        return Ended(False, lease.pgid)  # its pids mean nothing here
    if lease.pgid is not None:
        return Ended(await procs.end_group(lease.pgid, lease.pgid_started, grace), lease.pgid)
    ended = False
    groups = procs.groups_with_env(local_marks(lease.job_id, lease.attempt))
    for pgid in groups:
        ended |= await procs.end_group(pgid, None, grace)
    return Ended(ended, next(iter(groups)) if len(groups) == 1 else None)


@dataclass
class Run:
    """One job this process runs now."""

    job_id: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    done: asyncio.Event = field(default_factory=asyncio.Event)
    # Why it was stopped from outside (shutdown, lease_lost); None while it runs on.
    reason: str | None = None
    # Its action has started and not yet ended: only then is there something to stop.
    acting: bool = False

    def interrupt(self, reason: str) -> None:
        if self.reason is None:
            self.reason = reason
        self.stop.set()


class Runs:
    """This process's runs: registered while they go on, renewed together, stopped at
    shutdown after a grace; and a watch for runs left on this host by a dead executor."""

    def __init__(
        self,
        settings: ExecutorSettings,
        pool: asyncpg.Pool,
        outbox: Outbox,
        stopping: asyncio.Event,
        owner: Owner | None = None,
    ) -> None:
        self.settings = settings
        self.pool = pool
        self.outbox = outbox
        self.stopping = stopping
        self.owner = owner or Owner.here()
        self.running: dict[str, Run] = {}
        # The attempt of each job whose action this process started, until its lease ends:
        # a lease of ours whose attempt is not here never started its action.
        self.acted: dict[str, int] = {}
        self._keeper: asyncio.Task[None] | None = None
        # Process groups of running actions not yet written to their leases: by job,
        # with the run and when it was spawned (``SPAWN_RECORD_DELAY``).
        self._unrecorded: dict[str, tuple[Run, int, float]] = {}
        self._recording: asyncio.TimerHandle | None = None
        self._recorders: set[asyncio.Task[None]] = set()

    @property
    def ttl(self) -> float:
        return self.settings.lease_seconds

    @property
    def renew_every(self) -> float:
        return self.settings.lease_seconds / 3

    # ------------------------------------------------------------- registration

    def begin(self, job_id: str) -> Run:
        run = Run(job_id)
        self.running[job_id] = run
        return run

    def finish(self, run: Run) -> None:
        if self.running.get(run.job_id) is run:
            del self.running[run.job_id]
            self._unrecorded.pop(run.job_id, None)
        run.done.set()

    # ------------------------------------------------------- process groups

    def spawned(self, run: Run, pgid: int) -> None:
        """``run``'s action runs as process group ``pgid``: written to its lease if it is
        still running ``SPAWN_RECORD_DELAY`` seconds from now."""
        self._unrecorded[run.job_id] = (run, pgid, time.monotonic())
        if self._recording is None:
            loop = asyncio.get_running_loop()
            self._recording = loop.call_later(SPAWN_RECORD_DELAY, self._record_due)

    def _record_due(self) -> None:
        self._recording = None
        due_at = time.monotonic() - SPAWN_RECORD_DELAY
        due: list[tuple[str, int]] = []
        later: float | None = None
        for job_id, (run, pgid, at) in list(self._unrecorded.items()):
            if self.running.get(job_id) is not run or not run.acting:
                del self._unrecorded[job_id]  # its action has ended
            elif at <= due_at:
                del self._unrecorded[job_id]
                due.append((job_id, pgid))
            elif later is None or at < later:
                later = at
        if later is not None:
            loop = asyncio.get_running_loop()
            self._recording = loop.call_later(max(0.0, later - due_at), self._record_due)
        if due:
            task = asyncio.create_task(self._record(due), name="job-spawns")
            self._recorders.add(task)
            task.add_done_callback(self._recorders.discard)

    async def _record(self, due: list[tuple[str, int]]) -> None:
        rows = [(job_id, pgid, procs.start_time(pgid)) for job_id, pgid in due]
        try:
            async with self.pool.acquire() as conn:
                await leases.record_spawns(conn, self.owner, rows)
        except Exception as exc:
            # The actions run on; should we die, their processes are found by their
            # environment instead.
            log.warning("could not record the jobs' process groups", extra={"error": repr(exc)})

    # -------------------------------------------------------------- the keeper

    async def start(self) -> None:
        """Ends what dead executors left on this host, then keeps our leases alive."""
        await self.sweep()
        self._keeper = asyncio.create_task(self.keep(), name="job-leases")

    async def close(self) -> None:
        if self._recording is not None:
            self._recording.cancel()
            self._recording = None
        for task in list(self._recorders):
            task.cancel()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper

    async def keep(self) -> None:
        """Renew our leases every third of their life and sweep this host now and then;
        once stopping, give running jobs the shutdown grace, then stop them."""
        next_renew = next_sweep = time.monotonic() + self.renew_every
        grace_ends: float | None = None
        while True:
            now = time.monotonic()
            if now >= next_renew:
                next_renew = now + self.renew_every
                await self._renew()
            stopping = self.stopping.is_set()
            if not stopping and now >= next_sweep:
                next_sweep = now + self.settings.lease_seconds
                # Bounded, like the renewal: a stop must find this loop free to end jobs.
                try:
                    async with asyncio.timeout(self.settings.lease_seconds):
                        await self.sweep()
                except TimeoutError:
                    log.warning("looking for orphaned jobs took too long; next round later")
            if stopping and not self.running:
                # A stopping executor starts nothing new: nothing is left to keep.
                return
            wake = next_renew if stopping else min(next_renew, next_sweep)
            if stopping:
                if grace_ends is None:
                    grace_ends = now + self.settings.shutdown_grace_seconds
                    if self.running:
                        log.info(
                            "stopping: running jobs get %.0fs to finish",
                            self.settings.shutdown_grace_seconds,
                            extra={"jobs": ", ".join(self.running)},
                        )
                if now >= grace_ends:
                    self._interrupt_all("shutdown")
                    # A run that started its action just now is stopped on the next round.
                    wake = min(wake, now + 0.5)
                else:
                    wake = min(wake, grace_ends)
            timeout = max(0.05, wake - time.monotonic())
            if stopping:
                await asyncio.sleep(timeout)
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stopping.wait(), timeout=timeout)

    def _interrupt_all(self, reason: str) -> None:
        for run in list(self.running.values()):
            if run.acting and run.reason is None:
                log.warning("ending job: %s", reason, extra={"job_id": run.job_id})
                run.interrupt(reason)

    async def _renew(self) -> None:
        held = [r for r in self.running.values() if r.reason is None]
        if not held:
            return
        try:
            # Postgres away must not hold this loop: the shutdown grace is enforced here.
            async with asyncio.timeout(self.renew_every), self.pool.acquire() as conn:
                ours = await leases.renew(conn, self.owner, [r.job_id for r in held], self.ttl)
        except Exception as exc:
            # Postgres away: the runs go on; if it stays away past the lease, another
            # executor may take them as lost, and the next renewal will tell us.
            log.warning("could not renew job leases", extra={"error": repr(exc)})
            return
        for run in held:
            if run.job_id not in ours and run.acting and self.running.get(run.job_id) is run:
                # Another executor took this run as lost (we could not renew in time) and
                # has recorded it: it must not go on beside whatever that one does now.
                log.error("job lease lost to another executor; ending the job's action",
                          extra={"job_id": run.job_id})  # fmt: skip
                run.interrupt("lease_lost")

    # -------------------------------------------------------------- the sweep

    async def sweep(self) -> int:
        """End the runs that dead executors of this host left behind, and record them
        interrupted (or hand them to their next attempt). Returns how many were found."""
        try:
            async with self.pool.acquire() as conn:
                found = await leases.open_on_host(conn, self.owner)
        except Exception as exc:
            log.warning("could not look for orphaned jobs", extra={"error": repr(exc)})
            return 0
        count = 0
        for lease in found:
            if procs.alive(lease.owner_pid, lease.owner_started):
                continue  # another executor of this host, alive: its runs are its own
            try:
                # Shielded: a sweep round that runs out of time must not cut an adoption
                # short between taking the lease and recording the run.
                count += await asyncio.shield(self._adopt(lease))
            except Exception:
                log.exception("could not end an orphaned job", extra={"job_id": lease.job_id})
        return count

    async def _take_over(self, lease: Lease) -> ev.Event[Any] | None:
        """Take a dead executor's lease whose job's action ran: the job's request, or
        ``None`` when another took it first, or the lease is ended here (no request in the
        log, the job already finished, or its action never started)."""
        async with self.pool.acquire() as conn:
            if not await leases.adopt(conn, lease, self.owner, self.ttl):
                return None  # someone else took it meanwhile
            request = await leases.request_event(conn, lease.request_id)
            if request is None:
                log.error("a job lease names no request in the log; released",
                          extra={"job_id": lease.job_id})  # fmt: skip
                await leases.end(conn, lease.job_id, self.owner, "no_request")
                return None
            if await leases.terminal_recorded(conn, lease, outcomes.TERMINAL_STEP):
                await leases.end(conn, lease.job_id, self.owner, "finished")
                return None
            if not await leases.started_recorded(conn, lease):
                await leases.release_unstarted(conn, lease.job_id, self.owner)
                return None
        return request

    async def _adopt(self, lease: Lease) -> int:
        # Marked before the lease is ours: should this adoption stop at any point after
        # taking it (cancelled, Postgres gone) and before the run is recorded, the lease
        # is ours but the job must not read as never started here (that is what a lease
        # of ours with no action of ours means): its message, coming back, finds the
        # run lost and records it.
        self.acted[lease.job_id] = lease.attempt
        request = await self._take_over(lease)
        if request is None:
            self.acted.pop(lease.job_id, None)  # the job is given back, or another's
            return 0
        # Its action ran (under the dead executor).
        log.warning(
            "found a job left running by a stopped executor on this host",
            extra={"job_id": lease.job_id, "pgid": lease.pgid, "executor_pid": lease.owner_pid},
        )
        ended = await end_processes(lease, self.owner.host, self.settings.kill_grace_seconds)
        req = outcomes.job_request(request)
        event = outcomes.interrupted(
            req,
            lease.attempt,
            "orphaned" if ended.running else "executor_lost",
            retrying=outcomes.retries(req.data, lease.attempt, self.settings.max_attempts),
            host=lease.hostname,
            pgid=ended.pgid,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            inserted, known = await self.outbox.commit([event], conn=conn)
            await leases.end(conn, lease.job_id, self.owner, "interrupted")
        self.outbox.publish_later([*inserted, *known])
        self.acted.pop(lease.job_id, None)
        if inserted:
            outcomes.count_interrupted(event)
        return 1
