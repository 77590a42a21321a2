"""Entry point: ``hookbus-dispatcher`` / ``python -m hookbus_dispatcher``."""

from __future__ import annotations

from hookbus_common.service import main_for, run_consumer

from . import config
from .config import DispatcherConfig
from .delivery import make_handler, max_deliver
from .ssrf import open_clients


async def run(settings: DispatcherConfig) -> None:
    d = settings.dispatcher
    async with open_clients(d.networks(), d.timeout_seconds) as (client, private):
        await run_consumer(
            settings,
            "dispatcher",
            filter_tokens=[("delivery", "requested")],
            make_handler=lambda rt: make_handler(
                client,
                rt.pool,
                d.max_attempts,
                endpoints=settings.endpoints,
                private_client=private,
            ),
            health_port=d.health_port,
            max_in_flight=d.max_in_flight,
            # Attempts are counted by the handler, from the log; this is only the safety net.
            max_deliver=max_deliver(d.max_attempts),
            ack_wait=d.ack_wait_seconds,
            # Delivered (or given up) before we died unacked: not sent again.
            terminal_step="outcome",
        )


def main() -> None:
    main_for("dispatcher", config.load, run)


if __name__ == "__main__":
    main()
