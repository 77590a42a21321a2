"""How CLI commands find their settings: the file, the environment, and a running ``up``."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import msgspec

from hookbus_api import config as api
from hookbus_common import settings as core
from hookbus_common.errors import ConfigError
from hookbus_common.settings import STRUCT, Settings
from hookbus_dispatcher import config as dispatcher
from hookbus_executor import config as executor
from hookbus_receiver import config as receiver
from hookbus_receiver.config import ReceiverSettings
from hookbus_router import config as router

T = TypeVar("T")


class ReceiverAddress(Settings, **STRUCT):
    """The core and the receiver's section alone: where it listens, never its secrets."""

    receiver: ReceiverSettings = ReceiverSettings()


@dataclass(frozen=True)
class Installation:
    """Every service's view of one config, each checked as that service would at start."""

    receiver: receiver.ReceiverConfig
    router: router.RouterConfig
    executor: executor.ExecutorConfig
    dispatcher: dispatcher.DispatcherConfig
    api: api.ApiConfig = field(default_factory=api.ApiConfig)


def running_up(data_dir: str | None) -> dict[str, str]:
    """Where a ``hookbus up`` of this directory serves NATS and Postgres, if one runs."""
    state = Path(data_dir or ".hookbus") / "up.json"
    try:
        info: dict[str, Any] = msgspec.json.decode(state.read_bytes())
        os.kill(int(info["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError, msgspec.DecodeError):
        return {}
    env = {"HOOKBUS_NATS__URL": info["nats_url"], "HOOKBUS_DATABASE__URL": info["database_url"]}
    if "stream_replicas" in info:  # `hookbus up --nats-cluster`: keep the stream's replicas
        env["HOOKBUS_NATS__STREAM_REPLICAS"] = str(info["stream_replicas"])
    if "secrets_key_file" in info:  # the key run-time endpoints' secrets are sealed under
        env["HOOKBUS_SECRETS_KEY_FILE"] = str(info["secrets_key_file"])
    return env


def environment(args: argparse.Namespace) -> dict[str, str]:
    env: dict[str, str] = dict(os.environ)
    if not any(k in env for k in ("HOOKBUS_DATABASE__URL", "DATABASE_URL")):
        # Commands run beside `hookbus up` find its embedded servers without set-up.
        env = {**running_up(getattr(args, "data_dir", None)), **env}
    return env


def fail(exc: ConfigError) -> NoReturn:
    raise SystemExit(f"hookbus: config error: {exc}") from None


def _loaded(load: Callable[[str | None, Mapping[str, str]], T], args: argparse.Namespace) -> T:
    try:
        return load(args.config, environment(args))
    except ConfigError as exc:
        fail(exc)


def core_settings(args: argparse.Namespace) -> Settings:
    """The shared core (NATS, Postgres, prefix): enough for reading the log."""
    return _loaded(lambda path, env: core.load(Settings, path, env), args)


def receiver_address(args: argparse.Namespace) -> ReceiverAddress:
    return _loaded(lambda path, env: core.load(ReceiverAddress, path, env), args)


def check_all(path: str | Path | None, env: Mapping[str, str]) -> Installation:
    """Load the config as every service will; raises the first ConfigError."""
    return Installation(
        receiver=receiver.load(path, env),
        router=router.load(path, env),
        executor=executor.load(path, env),
        dispatcher=dispatcher.load(path, env),
        api=api.load(path, env),
    )


def installation(args: argparse.Namespace) -> Installation:
    return _loaded(check_all, args)


LOADERS: dict[str, Callable[[str | Path | None, Mapping[str, str]], Settings]] = {
    "receiver": receiver.load,
    "router": router.load,
    "executor": executor.load,
    "dispatcher": dispatcher.load,
    "api": api.load,
}


def service_settings(args: argparse.Namespace, service: str) -> Settings:
    """One service's config, checked as that service will at start (and nothing more:
    the router does not need the receiver's secrets)."""
    return _loaded(LOADERS[service], args)
