"""Entry point: ``hookbus-executor`` / ``python -m hookbus_executor``."""

from __future__ import annotations

from hookbus_common.consumer import Handler
from hookbus_common.service import Runtime, main_for, run_consumer

from . import config
from .config import ExecutorConfig
from .jobs import Executor, make_handler
from .runs import Runs


async def run(settings: ExecutorConfig) -> None:
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
    # uvloop, like the other services: actions are spawned by subprocess.Popen (vfork)
    # and waited for through a pidfd (shell.Child), never through the loop's own
    # subprocess support (libuv forks the whole process, ~5x slower to spawn).
    main_for("executor", config.load, run)


if __name__ == "__main__":
    main()
