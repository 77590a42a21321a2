"""Entry point: ``hookbus-dispatcher`` / ``python -m hookbus_dispatcher``."""

from __future__ import annotations

import asyncio
import sys

from hookbus_common.consumer import Handler
from hookbus_common.errors import ConfigError
from hookbus_common.service import Runtime, main_for, run_consumer

from . import config, endpointstore, retryafter
from .config import DispatcherConfig
from .delivery import make_handler, max_deliver
from .fairness_loop import consumer_for
from .fanout import with_fanout
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
            store = endpointstore.Store(rt.pool, ttl=d.endpoint_cache_seconds)
            deliver = make_handler(
                client,
                rt.pool,
                d.attempts(),
                endpoints=settings.endpoints,
                private_client=private,
                retry_schedule=d.retry_schedule,
                scheduler=schedulers[0],
                notifications=settings.notifications,
                disable_after=d.disable_after,
                runtime=store,
            )
            # Submitted messages become deliveries here, where every endpoint is known.
            return with_fanout(deliver, rt.pool, settings.endpoints)

        async def started(rt: Runtime) -> None:
            both = await endpointstore.clashes(rt.pool, list(settings.endpoints))
            if both:
                raise ConfigError(
                    f"endpoints.{both[0]}: also added at run time (hookbus endpoints add);"
                    " delete one of the two"
                )
            # Publishes deliveries whose next attempt is due; ends when the stop is set.
            tasks.append(asyncio.create_task(schedulers[0].run(rt.stop), name="schedule"))

        try:
            await run_consumer(
                settings,
                "dispatcher",
                filter_tokens=[("delivery", "requested"), ("message", "submitted")],
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
                # No terminal_step: the handler finds a delivery that ended before we
                # died unacked in the same read as its attempts (delivery.standing).
                started=started,
                # Reads ahead, and sends fairly by tenant and destination.
                make_consumer=consumer_for(settings),
            )
        except ConfigError as exc:
            print(f"hookbus-dispatcher: config error: {exc}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)


def main() -> None:
    main_for("dispatcher", config.load, run)


if __name__ == "__main__":
    main()
