"""Entry point: ``hookbus-router`` / ``python -m hookbus_router``."""

from __future__ import annotations

from hookbus_common.service import main_for, run_consumer

from . import config
from .config import RouterConfig
from .routing import FILTER_TOKENS, make_handler


async def run(settings: RouterConfig) -> None:
    await run_consumer(
        settings,
        "router",
        filter_tokens=FILTER_TOKENS,
        make_handler=lambda rt: make_handler(
            settings.rules, record_unmatched=settings.router.record_unmatched
        ),
        health_port=settings.router.health_port,
        max_in_flight=settings.router.max_in_flight,
        max_deliver=settings.router.max_deliver,
        ack_wait=settings.router.ack_wait_seconds,
    )


def main() -> None:
    main_for("router", config.load, run)


if __name__ == "__main__":
    main()
