"""Entry point: ``hookbus-dispatcher`` / ``python -m hookbus_dispatcher``."""

from __future__ import annotations

import httpx

from hookbus_common.service import main_for, run_consumer

from . import config
from .config import DispatcherConfig
from .delivery import make_handler, max_deliver


async def run(settings: DispatcherConfig) -> None:
    timeout = httpx.Timeout(settings.dispatcher.timeout_seconds)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False) as client:
        await run_consumer(
            settings,
            "dispatcher",
            filter_tokens=[("delivery", "requested")],
            make_handler=lambda rt: make_handler(client, rt.pool, settings.dispatcher.max_attempts),
            health_port=settings.dispatcher.health_port,
            max_in_flight=settings.dispatcher.max_in_flight,
            # Attempts are counted by the handler, from the log; this is only the safety net.
            max_deliver=max_deliver(settings.dispatcher.max_attempts),
            ack_wait=settings.dispatcher.ack_wait_seconds,
            # Delivered (or given up) before we died unacked: not sent again.
            terminal_step="outcome",
        )


def main() -> None:
    main_for("dispatcher", config.load, run)


if __name__ == "__main__":
    main()
