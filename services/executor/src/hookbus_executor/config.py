"""The executor's config: the shared core and its ``[executor]`` section, nothing more.

The executor runs people's scripts, so it holds no webhook secret: it never decodes the
receiver's sources.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import msgspec

from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt

from . import dockerconfig, sshconfig
from .dockerconfig import DockerSettings
from .sshconfig import SshSettings

# What a stop needs beyond the shutdown grace and the kill grace to record the ended jobs
# (and for the consume loop to settle their messages) before it stops waiting for them.
SHUTDOWN_MARGIN = 5.0
# Running jobs tell NATS they are in progress every third of the ack wait, and at least
# this often.
_PROGRESS_EVERY_AT_MOST = 10.0
# Under this, a job's progress reports (every third of it) cannot be relied on to arrive
# in time on a busy host.
_MIN_ACK_WAIT = 3.0


class ExecutorSettings(msgspec.Struct, **STRUCT):
    health_port: Port = 9102
    max_in_flight: PositiveInt = 32
    max_deliver: PositiveInt = 5
    # Running jobs report progress (every third of it, at most 10 s apart), which restarts
    # this timer; a job may run, and a stop may wait for it, much longer.
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
    # The hosts SSH actions may name ([executor.ssh.hosts.<name>]): see docs/ssh.md.
    ssh: SshSettings = msgspec.field(default_factory=SshSettings)
    # The engine docker and compose actions act on ([executor.docker]): see docs/actions.md.
    docker: DockerSettings = msgspec.field(default_factory=DockerSettings)


class ExecutorConfig(core.Settings, **STRUCT):
    executor: ExecutorSettings = ExecutorSettings()


def progress_interval(e: ExecutorSettings) -> float:
    """How often a running job tells NATS its message is still being worked on."""
    return min(_PROGRESS_EVERY_AT_MOST, e.ack_wait_seconds / 3)


def drain_timeout(e: ExecutorSettings) -> float:
    """How long a stopping executor's consume loop waits for the jobs in hand: their
    shutdown grace, the kill grace that ends the rest, and time to record them."""
    return e.shutdown_grace_seconds + e.kill_grace_seconds + SHUTDOWN_MARGIN


def check(config: ExecutorConfig) -> None:
    """What the types cannot say: running jobs (and a stop waiting for them, however long
    its grace) must be able to keep their messages by reporting progress in time."""
    e = config.executor
    if e.ack_wait_seconds < _MIN_ACK_WAIT:
        raise ConfigError(
            f"executor.ack_wait_seconds ({e.ack_wait_seconds:g}) must be at least"
            f" {_MIN_ACK_WAIT:g} s: running jobs keep their messages by reporting progress"
            " every third of it, and reports that come late hand a running job's message to"
            " another executor"
        )
    sshconfig.check(e.ssh)
    dockerconfig.check(e.docker)


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> ExecutorConfig:
    config = core.load(ExecutorConfig, path, env)
    check(config)
    # The SSH hosts' keys are read now, so a missing or bad one stops the executor at start.
    sshconfig.load_keys(
        config.executor.ssh, config.resolve_path, os.environ if env is None else env
    )
    return config
