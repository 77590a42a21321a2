"""Reloading the rules while the router runs: on SIGHUP, and when the config file or the
rules file changes.

A change is seen at once on Linux, through inotify watches on the files and on the
directories holding them (an editor's save by rename and a ConfigMap's swap of its
``..data`` link happen in the directory), and by a check every 30 seconds besides, for
file systems that notify nothing. Where notifications cannot be had (not Linux, a
directory missing, the inotify watch limit reached) the files are checked once a second.
An idle router so wakes for its rules only every 30 seconds where it can.

A new config is loaded and checked exactly as at start; one that fails is refused with
the reason in the log and ``hookbus_router_reloads_total{result="refused"}``, and the
rules in use stay. Only the rules are reloaded: other settings take a restart.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import signal
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Final

from hookbus_common.errors import ConfigError

from . import metrics
from .config import RouterConfig
from .rules import RuleSet

if TYPE_CHECKING:
    from asyncinotify import Inotify, Watch

log = logging.getLogger(__name__)

POLL_SECONDS: Final = 1.0  # the check without notifications
SAFETY_POLL_SECONDS: Final = 30.0  # the check with them, for changes they do not tell

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
        # Whether the files are watched for changes (else polled); None before the watch.
        self.notifying: bool | None = None
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

    async def watch(
        self,
        stop: asyncio.Event,
        *,
        interval: float = POLL_SECONDS,
        safety: float = SAFETY_POLL_SECONDS,
    ) -> None:
        """Reload on request and when a watched file changes, until ``stop`` is set: on a
        file-system notification and every ``safety`` seconds, or every ``interval``
        seconds where there are no notifications."""
        notices, unavailable = _Notices.open()
        stopping = asyncio.create_task(stop.wait())
        try:
            wait = safety if self._follow(notices, unavailable) else interval
            # A file written after the rules were loaded and before it was watched.
            if self.changed():
                await asyncio.to_thread(self.reload, "file changed")
            while not stop.is_set():
                woken = asyncio.create_task(self._wake.wait())
                waits = {stopping, woken}
                if notices is not None:
                    waits.add(asyncio.create_task(notices.seen.wait()))
                # Whichever comes first: stop, SIGHUP, a notification, or the time to check.
                await asyncio.wait(waits, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
                for task in waits - {stopping}:
                    task.cancel()
                if stop.is_set():
                    return
                if notices is not None:
                    notices.seen.clear()  # before the check: a later event checks again
                if self._wake.is_set():
                    self._wake.clear()
                    self.changed()
                    await asyncio.to_thread(self.reload, "SIGHUP")
                elif self.changed():
                    await asyncio.to_thread(self.reload, "file changed")
                wait = safety if self._follow(notices, unavailable) else interval
        finally:
            stopping.cancel()
            if notices is not None:
                await notices.close()

    def _follow(self, notices: _Notices | None, unavailable: str) -> bool:
        """Watch the files in use (a reload may have named others, a directory may have
        gone or come back); whether they all are. A change of that is logged once."""
        why = notices.watch(self._files) if notices is not None else unavailable
        if not why and self.notifying is not True:
            log.info("rules files watched: a change reloads at once")
        elif why and self.notifying is not False:
            log.log(
                logging.WARNING if notices is not None else logging.INFO,
                "rules files checked once a second: they cannot be watched",
                extra={"reason": why},
            )
        self.notifying = not why
        return self.notifying


class _Notices:
    """inotify watches on the watched files and on the directories holding them; ``seen``
    is set at any event on them (the files' signatures then tell whether they changed).

    A directory tells of a file replaced by a rename, created or deleted, and of a
    ConfigMap's ``..data`` link swapped; the file itself (its target, for a link) tells of
    a write by any path to it, such as a file bind-mounted into a container."""

    def __init__(self) -> None:
        from asyncinotify import Inotify, Mask  # only on Linux, where it is installed

        self._ino: Inotify = Inotify()
        changes = Mask.CLOSE_WRITE | Mask.ATTRIB | Mask.DELETE_SELF | Mask.MOVE_SELF
        self._file_mask = changes
        self._dir_mask = changes | Mask.MOVE | Mask.CREATE | Mask.DELETE | Mask.ONLYDIR
        self._watches: dict[Path, Watch] = {}
        self.seen = asyncio.Event()
        self._reading = asyncio.create_task(self._read())

    @classmethod
    def open(cls) -> tuple[_Notices | None, str]:
        """Notices, or None and why there can be none here."""
        try:
            return cls(), ""
        # Not Linux (the package is not installed), no inotify in the C library, or the
        # limit of inotify instances reached.
        except (ImportError, RuntimeError, OSError) as exc:
            return None, f"no file-system notifications: {exc}"

    async def _read(self) -> None:
        async for _ in self._ino:
            self.seen.set()

    def watch(self, files: list[Path]) -> str:
        """Watch ``files`` and their directories, and nothing else; why not, if a directory
        cannot be watched (a file that is missing is seen coming back by its directory)."""
        if self._reading.done():  # it failed, which reading an inotify descriptor should not
            return f"notifications stopped: {self._reading.exception()!r}"
        watches: dict[Path, Watch] = {}
        why = ""
        for path, is_dir in [(f.parent, True) for f in files] + [(f, False) for f in files]:
            try:
                # Again at each check: a file replaced is a new inode to watch, and adding
                # a watch already there keeps it.
                mask = self._dir_mask if is_dir else self._file_mask
                watches[path] = self._ino.add_watch(path, mask)
            except OSError as exc:
                if is_dir and not why:
                    # ENOSPC: not the disk, the limit of watches (fs.inotify.max_user_watches).
                    limit = " (inotify watch limit)" if exc.errno == errno.ENOSPC else ""
                    why = f"cannot watch {path}: {exc.strerror or exc}{limit}"
        kept = {w.wd for w in watches.values()}
        for old in self._watches.values():
            if old.wd not in kept:
                with suppress(OSError):  # gone with its file or directory
                    self._ino.rm_watch(old)
        self._watches = watches
        return why

    async def close(self) -> None:
        self._reading.cancel()
        await asyncio.wait({self._reading})
        self._ino.close()


def start(live: LiveRules, stop: asyncio.Event) -> asyncio.Task[None]:
    """Watch for reloads in the background (SIGHUP included) until ``stop`` is set."""
    loop = asyncio.get_running_loop()
    with suppress(NotImplementedError, RuntimeError):  # no signals off the main thread
        loop.add_signal_handler(signal.SIGHUP, live.request)
    return asyncio.create_task(live.watch(stop), name="rules-reload")
