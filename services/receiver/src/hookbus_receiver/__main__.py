"""Entry point: ``hookbus-receiver`` / ``python -m hookbus_receiver``."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from types import FrameType

import uvicorn

from hookbus_common import logs
from hookbus_common.errors import ConfigError

from . import config
from .sourcehooks import prepare_sources


class _Server(uvicorn.Server):
    """uvicorn's server, waking once a second while idle instead of ten times.

    uvicorn's main loop wakes every 0.1 s to see whether it must exit, and every tenth
    wake refreshes the cached Date header: ten wake-ups a second were most of the idle
    receiver's CPU. Here it wakes once a second, refreshing the Date header as often as
    before, and a SIGINT/SIGTERM wakes it at once, so stopping is as prompt as before.
    """

    _wake: asyncio.Event | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def main_loop(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        # Tick 0 each time: the Date header is refreshed on every (one-second) tick.
        while not await self.on_tick(0):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=1.0)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if self._loop is not None and self._wake is not None:
            self._loop.call_soon_threadsafe(self._wake.set)


def main() -> None:
    parser = argparse.ArgumentParser(prog="hookbus-receiver")
    parser.add_argument("--config", "-c", help="TOML config file (default: $HOOKBUS_CONFIG)")
    args = parser.parse_args()
    if args.config:
        # Workers load settings themselves; the path reaches them this way.
        os.environ["HOOKBUS_CONFIG"] = os.path.abspath(args.config)
    try:
        settings = config.load()
        prepare_sources(settings)  # key files and the like fail here, not in a worker
    except ConfigError as exc:
        print(f"hookbus-receiver: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup("receiver", settings.log.level, settings.log.format)
    options = dict(
        app="hookbus_receiver.app:create_app",
        factory=True,
        host=settings.receiver.host,
        port=settings.receiver.port,
        workers=settings.receiver.workers,
        loop="uvloop",
        http="httptools",
        access_log=False,
        # Sources choose whom they trust for X-Forwarded-For (trusted_proxies); uvicorn
        # must not rewrite the client address on its own.
        proxy_headers=False,
        log_config=None,
        lifespan="on",
        timeout_graceful_shutdown=10,
    )
    if settings.receiver.workers > 1:
        # Worker processes under uvicorn's supervisor, each with uvicorn's own server.
        uvicorn.run(**options)  # type: ignore[arg-type]
        return
    server = _Server(uvicorn.Config(**options))  # type: ignore[arg-type]
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


if __name__ == "__main__":
    main()
