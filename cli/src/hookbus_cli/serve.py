"""``hookbus serve <service>``: run one service in the foreground."""

from __future__ import annotations

import argparse
import os
import sys

from .config import environment, service_settings

# The operator API (`api`) serves on its own port, never the receiver's.
SERVICES = ("receiver", "router", "executor", "dispatcher", "api")


def service_argv(service: str, config: str | None) -> list[str]:
    argv = [sys.executable, "-m", f"hookbus_{service}"]
    return [*argv, "--config", config] if config else argv


def cmd_serve(args: argparse.Namespace) -> int:
    # Fail here, with the key named, rather than in the child.
    service_settings(args, args.service)
    argv = service_argv(args.service, args.config)
    try:
        __import__(f"hookbus_{args.service}")
    except ImportError:
        raise SystemExit(
            f"hookbus: the {args.service} service is not installed"
            f" (uv sync --package hookbus-{args.service})"
        ) from None
    # The environment the settings were checked with: beside `hookbus up`, that names its
    # NATS and Postgres, which the service would not find from the file alone.
    os.execve(argv[0], argv, environment(args))  # noqa: S606 (argv built from a fixed choice)


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser("serve", help="run one service in the foreground")
    serve.add_argument("service", choices=SERVICES)
    serve.set_defaults(func=cmd_serve)
