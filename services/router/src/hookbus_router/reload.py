"""Reloading the rules while the router runs: on SIGHUP, and when the config file or the
rules file changes (their status is polled, about once a second).

A new config is loaded and checked exactly as at start; one that fails is refused with
the reason in the log and ``hookbus_router_reloads_total{result="refused"}``, and the
rules in use stay. Only the rules are reloaded: other settings take a restart.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import Final

from hookbus_common.errors import ConfigError

from . import metrics
from .config import RouterConfig
from .rules import RuleSet

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 1.0

Loader = Callable[[str | None], RouterConfig]
Signature = tuple[int, int, int] | None


def watched_files(config: RouterConfig) -> list[Path]:
    """The files the rules come from: the config file, and its rules file if it names one."""
    files = [Path(config.config_file)] if config.config_file else []
    if config.router.rules_file:
        files.append(config.resolve_path(config.router.rules_file))
    return files


def _signature(path: Path) -> Signature:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_mtime_ns, st.st_size, st.st_ino)


class LiveRules:
    """The rules in use; calling it gives the current RuleSet (the handler does, per
    event), and ``reload`` replaces it only with rules that loaded and checked."""

    def __init__(self, config: RouterConfig, load: Loader) -> None:
        self.current = RuleSet.build(config.rules)
        self._path = config.config_file
        self._load = load
        self._files = watched_files(config)
        self._seen = self._signatures()
        self._wake = asyncio.Event()

    def __call__(self) -> RuleSet:
        return self.current

    def _signatures(self) -> dict[Path, Signature]:
        return {f: _signature(f) for f in self._files}

    def changed(self) -> bool:
        """Whether a watched file changed since it was last read (and note it read)."""
        now = self._signatures()
        if now == self._seen:
            return False
        self._seen = now
        return True

    def reload(self, why: str) -> str:
        """Load and check the config again; ``applied``, ``unchanged`` or ``refused``."""
        # The files as they were before they are read: one written while they are read is
        # a change at the next poll (read again then), not taken for what was read.
        before = self._signatures()
        try:
            config = self._load(self._path)
            new = RuleSet.build(config.rules)
        except ConfigError as exc:
            metrics.RELOADS.labels(result="refused").inc()
            log.warning(
                "rules reload refused; the rules in use stay",
                extra={"reason": str(exc), "trigger": why, "version": self.current.version},
            )
            return "refused"
        self._files = watched_files(config)
        self._seen = {f: before[f] if f in before else _signature(f) for f in self._files}
        if new.version == self.current.version:
            metrics.RELOADS.labels(result="unchanged").inc()
            log.info("rules reloaded, unchanged", extra={"trigger": why, "version": new.version})
            return "unchanged"
        old, self.current = self.current, new
        metrics.RELOADS.labels(result="applied").inc()
        log.info(
            "rules reloaded",
            extra={
                "trigger": why,
                "version": new.version,
                "previous_version": old.version,
                "rules": len(new.rules),
            },
        )
        return "applied"

    def request(self) -> None:
        """Ask for a reload now (what SIGHUP does)."""
        self._wake.set()

    async def watch(self, stop: asyncio.Event, *, interval: float = POLL_SECONDS) -> None:
        """Reload on request and when a watched file changes, until ``stop`` is set."""
        stopping = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                woken = asyncio.create_task(self._wake.wait())
                await asyncio.wait({stopping, woken}, timeout=interval)
                woken.cancel()
                if stop.is_set():
                    return
                if self._wake.is_set():
                    self._wake.clear()
                    self.changed()
                    await asyncio.to_thread(self.reload, "SIGHUP")
                elif self.changed():
                    await asyncio.to_thread(self.reload, "file changed")
        finally:
            stopping.cancel()


def start(live: LiveRules, stop: asyncio.Event) -> asyncio.Task[None]:
    """Watch for reloads in the background (SIGHUP included) until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGHUP, live.request)
    return asyncio.create_task(live.watch(stop), name="rules-reload")
