"""``hookbus``: the one command for people — run, serve, migrate, read the log, manage."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Iterator, Sequence

from hookbus_common.events import allow_deep_payloads

from . import (
    configcheck,
    deliveries,
    dlq,
    endpoints,
    events,
    migrate,
    partners,
    projects,
    replay,
    rules,
    send,
    serve,
    tail,
    tokens,
    up,
    verify,
    webhookurl,
)
from .database import DatabaseUnreachable

DEFAULT_DATA_DIR = ".hookbus"


def _add_global_options(p: argparse.ArgumentParser, *, default: object) -> None:
    p.add_argument(
        "--config",
        "-c",
        default=default,
        help="TOML config file (default: $HOOKBUS_CONFIG or ./hookbus.toml)",
    )
    p.add_argument(
        "--data-dir",
        default=default,
        help=f"where `hookbus up` keeps NATS and Postgres data (default: {DEFAULT_DATA_DIR})",
    )


def _commands(p: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    """Every (sub)command parser below ``p``, each once (aliases share a parser)."""
    seen: set[int] = set()
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                if id(child) not in seen:
                    seen.add(id(child))
                    yield child
                    yield from _commands(child)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hookbus", description=__doc__)
    _add_global_options(p, default=None)
    p.set_defaults(data_dir=DEFAULT_DATA_DIR)
    sub = p.add_subparsers(dest="command", required=True)
    for module in (
        up,
        serve,
        migrate,
        events,
        replay,
        tail,
        configcheck,
        rules,
        verify,
        partners,
        webhookurl,
        tokens,
        deliveries,
        dlq,
        endpoints,
        projects,
        send,
    ):
        module.register(sub)
    # The global options are accepted after the command too (`hookbus up --data-dir d`).
    # SUPPRESS leaves a value given before the command alone when none is given after it.
    for command in _commands(p):
        _add_global_options(command, default=argparse.SUPPRESS)
    return p


def _stdout_closed() -> None:
    # The reader went away (`hookbus events | head -1`): Python flushes stdout again at
    # exit, so point it at /dev/null to keep that flush from raising as well.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    allow_deep_payloads()  # listing and rebuilding decode whatever the receiver accepted
    try:
        code = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _stdout_closed()
        raise SystemExit(1) from None
    except DatabaseUnreachable as exc:
        print(f"hookbus: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    raise SystemExit(code)


if __name__ == "__main__":
    main()
