"""The executor's config: the shared core and its ``[executor]`` section, nothing more.

The executor runs people's scripts, so it holds no webhook secret: it never decodes the
receiver's sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from hookbus_common import settings as core
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt


class ExecutorSettings(msgspec.Struct, **STRUCT):
    health_port: Port = 9102
    max_in_flight: PositiveInt = 4
    max_deliver: PositiveInt = 5
    # Running jobs report progress, which restarts this timer.
    ack_wait_seconds: PositiveFloat = 60.0
    max_output_bytes: PositiveInt = 64 * 1024
    kill_grace_seconds: PositiveFloat = 5.0
    # Only these variables of the executor's own environment reach an action; the rest
    # (database URLs, tokens) stay out of scripts and their logs.
    inherit_env: list[str] = msgspec.field(
        default_factory=lambda: ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"]
    )
    workdir: str | None = None


class ExecutorConfig(core.Settings, **STRUCT):
    executor: ExecutorSettings = ExecutorSettings()


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ExecutorConfig:
    return core.load(ExecutorConfig, path, env)
