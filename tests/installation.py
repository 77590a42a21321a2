"""One config file loaded the way every service loads it, read as one object by tests.

Each service decodes the shared core and its own sections; ``load_whole`` runs all four
loaders (what ``hookbus config check`` runs) and answers each attribute from the service
that owns it: ``.receiver`` and ``.sources`` from the receiver's config, ``.rules`` from
the router's, ``.executor`` from the executor's, the core from any.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hookbus_cli.config import Installation, check_all
from hookbus_dispatcher.config import DispatcherConfig
from hookbus_executor.config import ExecutorConfig
from hookbus_receiver.config import ReceiverConfig
from hookbus_router.config import RouterConfig


class Whole:
    def __init__(self, inst: Installation) -> None:
        self.inst = inst

    def __repr__(self) -> str:
        return repr(self.inst)

    def __getattr__(self, name: str) -> Any:
        inst = self.inst
        for part in (inst.receiver, inst.router, inst.executor, inst.dispatcher):
            if name in type(part).__struct_fields__:
                return getattr(part, name)
        return getattr(inst.receiver, name)


def load_whole(path: str | Path | None, env: Mapping[str, str]) -> Any:
    return Whole(check_all(path, env))


def defaults() -> Installation:
    """Every service's config with nothing set."""
    return Installation(
        receiver=ReceiverConfig(),
        router=RouterConfig(),
        executor=ExecutorConfig(),
        dispatcher=DispatcherConfig(),
    )
