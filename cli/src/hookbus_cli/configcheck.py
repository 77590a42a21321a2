"""``hookbus config check``: load the config as every service would at start, and find the
programs the rules' shell actions run, as the executor will, and the secrets key when one is given."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping

from hookbus_common import sealing
from hookbus_executor.shell import find_program
from hookbus_router.config import ShellAction

from .config import Installation, environment, installation


def _where_cwd(inst: Installation, action: ShellAction, at: str) -> tuple[str, str]:
    """The directory the executor runs ``action`` in (as its jobs do), and what set it."""
    executor = inst.executor
    if action.cwd:
        how = f"{at}.cwd"
    elif executor.executor.workdir:
        how = "executor.workdir"
    elif executor.base_dir != ".":
        how = "the config file's directory"
    else:
        how = "the current directory"
    cwd = executor.resolve_path(action.cwd or executor.executor.workdir or ".")
    return os.path.abspath(cwd), how


def _action_path(inst: Installation, action: ShellAction, env: Mapping[str, str]) -> str | None:
    """The PATH the action will see: the executor's own, if it passes it on, under the
    action's ``env``."""
    inherited = {k: env[k] for k in inst.executor.executor.inherit_env if k in env}
    return {**inherited, **action.env}.get("PATH")


def program_problems(inst: Installation, env: Mapping[str, str]) -> list[str]:
    """One line for each shell action whose program the executor could not start."""
    problems = []
    for i, rule in enumerate(inst.router.rules):
        for j, action in enumerate(rule.actions):
            if not isinstance(action, ShellAction):
                continue
            at = f"rules[{i}].actions[{j}]"
            named = f"rules[{i}] ({rule.name}).actions[{j}]"
            cwd, how = _where_cwd(inst, action, at)
            if not os.path.isdir(cwd):
                problems.append(f"{named}.cwd: {cwd} is not a directory (from {how})")
                continue
            program = action.command[0]
            path = _action_path(inst, action, env)
            try:
                find_program(program, cwd=cwd, path=path)
            except PermissionError as exc:
                found = os.path.normpath(str(exc.filename))
                why = "a directory" if os.path.isdir(found) else "not executable (chmod +x)"
                problems.append(f"{named}.command: {program} ({found}) is {why}")
            except FileNotFoundError:
                if os.path.isabs(program):
                    where = ""
                elif "/" in program:
                    where = f" (relative to {how} {cwd})"
                else:
                    where = f" on PATH ({path if path is not None else os.defpath})"
                problems.append(f"{named}.command: {program} not found{where}")
    return problems


def cmd_config_check(args: argparse.Namespace) -> int:
    inst = installation(args)
    env = environment(args)
    problems = program_problems(inst, env)
    try:
        sealing.load(env)  # the key that seals run-time endpoints' secrets, when given
    except sealing.SealingError as exc:
        problems.append(str(exc))
    for line in problems:
        print(f"hookbus: config error: {line}", file=sys.stderr)
    if problems:
        return 1
    print(
        f"config ok: {len(inst.receiver.sources)} sources, {len(inst.router.rules)} rules, "
        f"prefix {inst.receiver.prefix!r}"
    )
    return 0


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    config = sub.add_parser("config", help="configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    config_sub.add_parser("check", help="validate the config").set_defaults(func=cmd_config_check)
