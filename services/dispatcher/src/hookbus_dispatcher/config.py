"""The dispatcher's config: the shared core and its ``[dispatcher]`` section."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import msgspec

from hookbus_common import settings as core
from hookbus_common.settings import STRUCT, Port, PositiveFloat, PositiveInt


class DispatcherSettings(msgspec.Struct, **STRUCT):
    health_port: Port = 9103
    max_in_flight: PositiveInt = 32
    ack_wait_seconds: PositiveFloat = 30.0
    max_attempts: PositiveInt = 5
    timeout_seconds: PositiveFloat = 10.0


class DispatcherConfig(core.Settings, **STRUCT):
    dispatcher: DispatcherSettings = DispatcherSettings()


def load(path: str | Path | None = None, env: Mapping[str, str] | None = None) -> DispatcherConfig:
    return core.load(DispatcherConfig, path, env)
