"""``hookbus``: the one command for people — run, serve, migrate, read the log, manage."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from . import configcheck, events, migrate, partners, serve, up, verify, webhookurl


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hookbus", description=__doc__)
    p.add_argument(
        "--config", "-c", help="TOML config file (default: $HOOKBUS_CONFIG or ./hookbus.toml)"
    )
    p.add_argument(
        "--data-dir", default=".hookbus", help="where `hookbus up` keeps NATS and Postgres data"
    )
    sub = p.add_subparsers(dest="command", required=True)
    for module in (up, serve, migrate, events, configcheck, verify, partners, webhookurl):
        module.register(sub)
    return p


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    raise SystemExit(args.func(args))


if __name__ == "__main__":
    main()
