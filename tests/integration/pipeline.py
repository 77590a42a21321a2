"""The router's and the executor's real consume loops on a test's stream: for tests that
follow a webhook from its rule to its job, without the services' processes."""

from __future__ import annotations

import asyncio

from hookbus_common.consumer import Consumer
from hookbus_common.service import Runtime
from hookbus_common.settings import extend
from hookbus_executor.config import ExecutorConfig, ExecutorSettings
from hookbus_executor.jobs import TERMINAL_STEP
from hookbus_executor.jobs import make_handler as executor_handler
from hookbus_executor.runs import Runs
from hookbus_router import waits
from hookbus_router.routing import FILTER_TOKENS, Rules
from hookbus_router.routing import make_handler as router_handler


class Pipeline:
    """The router (``rules``) and the executor, each its real consume loop on its own
    durable, running while inside ``async with``. ``waits_in_log``: the router keeps multi-event
    rules' waits and reads sequences in Postgres, as the service does."""

    def __init__(
        self, rt: Runtime, rules: Rules, *, waits_in_log: bool = False, executor_in_flight: int = 4
    ) -> None:
        self.stop = asyncio.Event()
        settings = extend(rt.settings, ExecutorConfig, executor=ExecutorSettings(lease_seconds=5.0))
        runs = Runs(settings.executor, rt.pool, rt.outbox, self.stop)
        store = waits.PgStore(rt.pool, rt.outbox) if waits_in_log else None
        prefix = rt.bus.prefix
        self.consumers = [
            Consumer(
                service="router", bus=rt.bus, outbox=rt.outbox, durable=f"{prefix}-router",
                filter_subjects=[".".join((prefix, *t, ">")) for t in FILTER_TOKENS],
                handler=router_handler(rules, store=store), max_in_flight=4, max_deliver=5,
            ),
            Consumer(
                service="executor", bus=rt.bus, outbox=rt.outbox, durable=f"{prefix}-executor",
                filter_subjects=[f"{prefix}.job.requested.>"],
                handler=executor_handler(settings, runs), max_in_flight=executor_in_flight,
                max_deliver=5, terminal_step=TERMINAL_STEP,
            ),
        ]  # fmt: skip
        self.tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> Pipeline:
        self.tasks = [asyncio.create_task(c.run(self.stop)) for c in self.consumers]
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.gather(*self.tasks), 30)
