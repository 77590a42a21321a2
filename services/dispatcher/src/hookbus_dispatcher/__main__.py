"""Entry point: ``hookbus-dispatcher`` / ``python -m hookbus_dispatcher``."""

from __future__ import annotations

import asyncio

from hookbus_common.consumer import Handler
from hookbus_common.service import Runtime, main_for, run_consumer

from . import config, retryafter
from .config import DispatcherConfig
from .delivery import make_handler, max_deliver
from .fairness_loop import consumer_for
from .limits_guard import guarded
from .ordering import ordered
from .schedule import Scheduler
from .ssrf import open_clients


async def run(settings: DispatcherConfig) -> None:
    d = settings.dispatcher
    schedulers: list[Scheduler] = []
    tasks: list[asyncio.Task[None]] = []

    async with open_clients(d.networks(), d.timeout_seconds) as (client, private):

        def handler(rt: Runtime) -> Handler:
            schedulers.append(Scheduler(rt.pool, rt.bus, clock=retryafter.utcnow))
            return make_handler(
                client,
                rt.pool,
                d.attempts(),
                endpoints=settings.endpoints,
                private_client=private,
                retry_schedule=d.retry_schedule,
                scheduler=schedulers[0],
                notifications=settings.notifications,
                disable_after=d.disable_after,
            )

        async def started(rt: Runtime) -> None:
            # Publishes deliveries whose next attempt is due; ends when the stop is set.
            tasks.append(asyncio.create_task(schedulers[0].run(rt.stop), name="schedule"))

        try:
            await run_consumer(
                settings,
                "dispatcher",
                filter_tokens=[("delivery", "requested")],
                # Over a rate or in-flight limit, or behind an earlier delivery of its
                # ordering key, a delivery waits on the schedule.
                make_handler=ordered(
                    guarded(handler, settings, lambda: schedulers[0].wake()),
                    lambda: schedulers[0].wake(),
                ),
                health_port=d.health_port,
                max_in_flight=d.max_in_flight,
                # Attempts are counted by the handler, from the log; this is only the
                # safety net.
                max_deliver=max_deliver(d.attempts()),
                ack_wait=d.ack_wait_seconds,
                # Delivered (or given up) before we died unacked: not sent again.
                terminal_step="outcome",
                started=started,
                # Reads ahead, and sends fairly by tenant and destination.
                make_consumer=consumer_for(settings),
            )
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    main_for("dispatcher", config.load, run)


if __name__ == "__main__":
    main()
