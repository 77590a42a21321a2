"""The executor's config: the shared core and its ``[executor]`` section, nothing more.

The executor runs people's scripts, so it holds no webhook secret: it never decodes the
receiver's sources.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt

# What the consume loop needs beyond the shutdown grace and the kill grace to record the
# ended jobs before it stops waiting for them.
_SHUTDOWN_MARGIN = 5.0


class ExecutorSettings(msgspec.Struct, **STRUCT):
    health_port: Port = 9102
    max_in_flight: PositiveInt = 4
    max_deliver: PositiveInt = 5
    # Running jobs report progress, which restarts this timer.
    ack_wait_seconds: PositiveFloat = 60.0
    max_output_bytes: PositiveInt = 64 * 1024
    kill_grace_seconds: PositiveFloat = 5.0
    # Stopped (SIGTERM, SIGINT), the executor takes no new job and gives running ones
    # this long to finish; then it ends their process groups and records them interrupted.
    shutdown_grace_seconds: PositiveFloat = 30.0
    # A run's lease, renewed every third of this while it runs: a run whose executor has
    # not renewed it for this long is taken as lost (its end unknown) by other executors.
    lease_seconds: PositiveFloat = 30.0
    # Runs of one job at most, when its rule re-runs interrupted jobs (on_interrupt =
    # "retry"); the interruption of the last one is recorded for good.
    max_attempts: PositiveInt = 3
    # Only these variables of the executor's own environment reach an action; the rest
    # (database URLs, tokens) stay out of scripts and their logs.
    inherit_env: list[str] = msgspec.field(
        default_factory=lambda: ["PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER"]
    )
    workdir: str | None = None


class ExecutorConfig(core.Settings, **STRUCT):
    executor: ExecutorSettings = ExecutorSettings()


def check(config: ExecutorConfig) -> None:
    """What the types cannot say: a stop must be able to end its jobs and record them
    before the consume loop stops waiting for them (one ack wait)."""
    e = config.executor
    if e.shutdown_grace_seconds + e.kill_grace_seconds + _SHUTDOWN_MARGIN > e.ack_wait_seconds:
        raise ConfigError(
            f"executor.shutdown_grace_seconds ({e.shutdown_grace_seconds:g}) +"
            f" executor.kill_grace_seconds ({e.kill_grace_seconds:g}) must stay at least"
            f" {_SHUTDOWN_MARGIN:g} s under executor.ack_wait_seconds ({e.ack_wait_seconds:g}):"
            " a stopping executor waits that long for its jobs to be ended and recorded"
        )


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ExecutorConfig:
    config = core.load(ExecutorConfig, path, env)
    check(config)
    return config
