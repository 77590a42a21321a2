"""Entry point: ``hookbus-api`` / ``python -m hookbus_api`` (the operator API and dashboard)."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys

import uvicorn

from hookbus_common import events, logs
from hookbus_common.errors import ConfigError

from . import config


def main() -> None:
    parser = argparse.ArgumentParser(prog="hookbus-api")
    parser.add_argument("--config", "-c", help="TOML config file (default: $HOOKBUS_CONFIG)")
    args = parser.parse_args()
    if args.config:
        os.environ["HOOKBUS_CONFIG"] = os.path.abspath(args.config)
    try:
        settings = config.load()
    except ConfigError as exc:
        print(f"hookbus-api: config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    logs.setup("api", settings.log.level, settings.log.format)
    events.allow_deep_payloads()  # showing whatever the receiver accepted
    from .app import create_app

    server = uvicorn.Server(
        uvicorn.Config(
            create_app(settings),
            host=settings.api.host,
            port=settings.api.port,
            loop="uvloop",
            http="httptools",
            access_log=False,
            proxy_headers=False,
            log_config=None,
            lifespan="on",
            # Live streams end with the server; a stop waits this long for them at most.
            timeout_graceful_shutdown=5,
        )
    )
    with contextlib.suppress(KeyboardInterrupt):
        server.run()
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE


if __name__ == "__main__":
    main()
