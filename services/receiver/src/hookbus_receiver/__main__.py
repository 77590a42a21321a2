"""Entry point: ``hookbus-receiver`` / ``python -m hookbus_receiver``."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import uvicorn

from hookbus_common import logs
from hookbus_common.errors import ConfigError

from . import config
from .serving import Server
from .sourcehooks import prepare_sources


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
        # httptools, writing each answer in one send; see serving.py.
        http="hookbus_receiver.serving:HttpProtocol",
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
    # Ticks once a second while serving and not at all when idle (serving.Server).
    server = Server(uvicorn.Config(**options))  # type: ignore[arg-type]
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


if __name__ == "__main__":
    main()
