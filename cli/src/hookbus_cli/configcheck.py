"""``hookbus config check``: load the config as every service would at start."""

from __future__ import annotations

import argparse

from .config import installation


def cmd_config_check(args: argparse.Namespace) -> int:
    inst = installation(args)
    print(
        f"config ok: {len(inst.receiver.sources)} sources, {len(inst.router.rules)} rules, "
        f"prefix {inst.receiver.prefix!r}"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("check", help="validate the config").set_defaults(func=cmd_config_check)
