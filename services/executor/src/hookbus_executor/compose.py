"""A compose action: ``pull`` or ``up -d`` of chosen services of a compose project, run as
a process (like a shell action) against the executor's engine."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from hookbus_common import events as ev


def compose_argv(command: Sequence[str], spec: ev.ComposeSpec, file: Path) -> list[str]:
    """The command line: ``<compose> -f <file> -p <project> up -d --pull <policy>
    [--wait] [services…]``, or ``… pull [services…]``."""
    base = [*command, "-f", str(file), "-p", spec.project]
    if spec.operation == "pull":
        return [*base, "pull", *spec.services]
    argv = [*base, "up", "-d", "--pull", spec.pull]
    if spec.wait:
        argv.append("--wait")
    return [*argv, *spec.services]


def compose_env(
    inherited: Mapping[str, str],
    context: Mapping[str, str],
    env: Mapping[str, str],
    docker_host: str | None,
    marks: Mapping[str, str],
) -> dict[str, str]:
    """The executor's allow-listed variables, the event's facts, the rule's variables
    (what the compose file interpolates, such as an image tag), then the engine's
    address and the job's marks, which a rule cannot override."""
    out = {**inherited, **context, **env}
    if docker_host is not None:
        out["DOCKER_HOST"] = docker_host
    out.update(marks)
    return out
