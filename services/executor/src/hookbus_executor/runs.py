"""The runs this executor holds: their leases kept alive, ended at shutdown, and the runs a
dead executor left on this host found and ended."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field

import asyncpg

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


async def end_processes(lease: Lease, host: procs.Host, grace: float) -> bool:
    """End what is left of ``lease``'s run on this host; whether anything was running."""
    if lease.host != host.id:
        return False  # its pids mean nothing here
    if lease.pgid is not None:
        return await procs.end_group(lease.pgid, lease.pgid_started, grace)
    ended = False
    for pgid in procs.groups_with_env(local_marks(lease.job_id, lease.attempt)):
        ended |= await procs.end_group(pgid, None, grace)
    return ended


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
        run.done.set()

    # -------------------------------------------------------------- the keeper

    async def start(self) -> None:
        """Ends what dead executors left on this host, then keeps our leases alive."""
        await self.sweep()
        self._keeper = asyncio.create_task(self.keep(), name="job-leases")

    async def close(self) -> None:
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

    async def _adopt(self, lease: Lease) -> int:
        async with self.pool.acquire() as conn:
            if not await leases.adopt(conn, lease, self.owner, self.ttl):
                return 0  # someone else took it meanwhile
            request = await leases.request_event(conn, lease.request_id)
            if request is None:
                log.error("a job lease names no request in the log; released",
                          extra={"job_id": lease.job_id})  # fmt: skip
                await leases.end(conn, lease.job_id, self.owner, "no_request")
                return 0
            if await leases.terminal_recorded(conn, lease, outcomes.TERMINAL_STEP):
                await leases.end(conn, lease.job_id, self.owner, "finished")
                return 0
            if not await leases.started_recorded(conn, lease):
                await leases.release_unstarted(conn, lease.job_id, self.owner)
                return 0
        # Its action ran (under the dead executor). Should this adoption stop before the
        # run is recorded, the lease is ours but the job must not read as never started
        # here: its message, coming back, finds the run lost and records it.
        self.acted[lease.job_id] = lease.attempt
        log.warning(
            "found a job left running by a stopped executor on this host",
            extra={"job_id": lease.job_id, "pgid": lease.pgid, "executor_pid": lease.owner_pid},
        )
        ended = await end_processes(lease, self.owner.host, self.settings.kill_grace_seconds)
        req = outcomes.job_request(request)
        event = outcomes.interrupted(
            req,
            lease.attempt,
            "orphaned" if ended else "executor_lost",
            retrying=outcomes.retries(req.data, lease.attempt, self.settings.max_attempts),
            host=lease.hostname,
            pgid=lease.pgid,
        )
        async with self.pool.acquire() as conn, conn.transaction():
            inserted, known = await self.outbox.commit([event], conn=conn)
            await leases.end(conn, lease.job_id, self.owner, "interrupted")
        self.outbox.publish_later([*inserted, *known])
        self.acted.pop(lease.job_id, None)
        if inserted:
            outcomes.count_interrupted(event)
        return 1
