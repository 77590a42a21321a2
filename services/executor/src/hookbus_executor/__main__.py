"""Entry point: ``hookbus-executor`` / ``python -m hookbus_executor``."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from hookbus_common.consumer import Handler
from hookbus_common.service import Runtime, main_for, run_consumer

from . import config
from .config import ExecutorConfig
from .jobs import Executor, make_handler
from .runs import Runs


def pidfd_available() -> bool:
    """Whether the kernel has pidfd_open (Linux >= 5.3)."""
    try:
        fd = os.pidfd_open(os.getpid())
    except (AttributeError, OSError):
        return False
    os.close(fd)
    return True


@contextmanager
def child_watcher() -> Iterator[asyncio.AbstractChildWatcher | None]:
    """Wait for the actions through a pidfd on the running loop where the kernel has one.

    Python 3.11's default, ThreadedChildWatcher, starts a thread per child to wait for
    it; a pidfd watcher polls one fd per child on the loop instead (3.12 chooses it by
    itself, so nothing is changed there). Yields the watcher installed, or None when the
    default stays; the default is restored on exit.
    """
    if sys.version_info >= (3, 12) or not pidfd_available():
        yield None
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)
    try:
        yield watcher
    finally:
        # None puts the default back (created again when next asked for); typeshed omits it.
        asyncio.set_child_watcher(None)  # type: ignore[arg-type]
        watcher.close()


async def run(settings: ExecutorConfig) -> None:
    with child_watcher():
        await _run(settings)


async def _run(settings: ExecutorConfig) -> None:
    runs: Runs | None = None
    executor: Executor | None = None

    def handler(rt: Runtime) -> Handler:
        nonlocal runs, executor
        runs = Runs(settings.executor, rt.pool, rt.outbox, rt.stop)
        executor = Executor(settings, runs)
        return make_handler(settings, runs, executor)

    async def started(rt: Runtime) -> None:
        # Before taking any job: end what a dead executor left running on this host.
        assert runs is not None
        await runs.start()

    try:
        await run_consumer(
            settings,
            "executor",
            filter_tokens=[("job", "requested")],
            make_handler=handler,
            started=started,
            health_port=settings.executor.health_port,
            max_in_flight=settings.executor.max_in_flight,
            max_deliver=settings.executor.max_deliver,
            ack_wait=settings.executor.ack_wait_seconds,
            # A stop waits for running jobs: their grace, then ending and recording them.
            drain_timeout=config.drain_timeout(settings.executor),
            # No terminal_step: a job that finished before we died (unacked) is found
            # finished by taking its lease (the same statement), not by a query of its own.
        )
    finally:
        if runs is not None:
            await runs.close()
        if executor is not None:
            await executor.close()


def main() -> None:
    # The default loop, not uvloop: asyncio starts processes with vfork (~1,400 spawns/s
    # here), libuv forks the whole process (~260/s), and spawning is the executor's work.
    main_for("executor", config.load, run, uvloop_if_available=False)


if __name__ == "__main__":
    main()
