"""The executor's ``[executor.docker]`` settings: which engine docker and compose actions
act on, and how Compose is run."""

from __future__ import annotations

from typing import Annotated

import msgspec

from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, PositiveFloat


class DockerSettings(msgspec.Struct, **STRUCT):
    # The engine's address (unix:///var/run/docker.sock, tcp://host:2376, ...); unset:
    # the executor's own DOCKER_HOST, else the Docker SDK's default socket.
    host: str | None = None
    # One call to the engine's API (create, start, inspect, ...) may take this long.
    api_timeout_seconds: PositiveFloat = 60.0
    # How Compose is run: the standalone binary, or ["docker", "compose"] for the plugin.
    compose_command: Annotated[list[str], msgspec.Meta(min_length=1)] = msgspec.field(
        default_factory=lambda: ["docker-compose"]
    )


def check(settings: DockerSettings) -> None:
    host = settings.host
    if host is not None and not host.startswith(("unix://", "tcp://", "ssh://", "npipe://")):
        raise ConfigError(
            f"executor.docker.host: {host!r} is not an engine address"
            " (unix:///path/to/docker.sock, tcp://host:port or ssh://user@host)"
        )
    if not all(settings.compose_command):
        raise ConfigError("executor.docker.compose_command: has an empty word")
